"""What differs between task types: reading rows, checking them, tokenising, the model head, metrics,
what a prediction looks like (served, counted by the monitor, ranked for labelling).

The stages, serving, the monitor and active learning are written against this interface only; a new
task type is one module implementing it.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError
from pipeline.models import pretrained_kwargs
from pipeline.params import TaskConfig
from pipeline.readers import from_drop_folder, read_source
from pipeline.records import Record
from pipeline.techniques import adapters

PROVENANCE = ("source", "row", "batch", "given_split")  # where a record came from, kept through the stages
WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """NFKC unicode, single spaces, no leading or trailing space."""
    return WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def plain(value: Any) -> Any:
    """A cell as a plain Python value (parquet gives numpy arrays and scalars)."""
    return value.tolist() if hasattr(value, "tolist") else value


def json_kind(value: Any) -> str | None:
    """'list', 'object' or 'boolean' for a cell that holds one of those rather than text or a number; else None."""
    value = plain(value)
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    return "list" if isinstance(value, (list, tuple)) else None


def cell_text(value: Any) -> str | None:
    """A table cell as text: None for a missing one (None, NaN), 1 for a float 1.0 (pandas reads integer columns
    with gaps as floats), JSON for a list, object or boolean (which `cell_problems` reports)."""
    value = plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if json_kind(value):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cell_problems(example: Record, cells: dict[str, Any]) -> Record:
    """`example` with a `cell_problem` naming each of `cells` (field: the value read) that holds a JSON list,
    object or boolean where text belongs; validation quarantines such a row rather than train on its JSON."""
    problems = [f"{field} is a JSON {json_kind(value)}, not text" for field, value in cells.items() if json_kind(value)]
    return {**example, "cell_problem": "; ".join(problems)} if problems else example


def label_key(label: str) -> str:
    """How labels are matched: ignoring case, surrounding spaces and unicode variants (" Positive " is positive)."""
    return normalise_text(label).casefold()


def never_predicted(labels: list[str], gold: list[str], predicted: list[str]) -> list[str]:
    """The labels (or entity types) the examples hold but the model never predicts, in declared order:
    a collapsed class that a macro average over the others can hide."""
    wanted, made = set(gold), set(predicted)
    return [label for label in labels if label in wanted and label not in made]


def label_lookup(labels: list[str], label_map: dict[str, str]) -> dict[str, str]:
    """Each spelling a source may use (a declared label, a label_map key), by label_key, to the declared label."""
    declared = {label_key(label): label for label in labels}
    return {**declared, **{label_key(source): declared[label_key(target)] for source, target in label_map.items()}}


@dataclass(frozen=True)
class Counts:
    """What a task type's predictions count, for the monitor and for ranking texts to label (`Task.observation`
    reads them from a prediction)."""

    noun: str  # one of them in words (plots, reports): "predicted label", "entity type"
    shift: str  # the name of the monitor's chi-square on them (reports, MLflow): label_shift, entity_types
    several: bool  # a text has any number of them (stored space-separated), not exactly one


class Task(ABC):
    primary_metric: str  # the validation metric that early stopping and promotion use
    transformers_task: str | None  # the transformers pipeline task, for MLflow's transformers flavour (None: a pyfunc model)
    config_class: type[TaskConfig]  # the dataclass its params.yaml section is read into (its module defines it)
    exports_onnx: bool = False  # registry.onnx: its model can run as an ONNX Runtime text classifier (pipeline/techniques/export.py)
    counts: Counts | None = None  # what its predictions count (None: nothing, so the monitor cannot watch it)
    class_distribution: bool = False  # `class_probabilities` gives one per text (active learning's uncertainty and diversity)
    finds_entities: bool = False  # its predictions list `entities` (type, start, end, text): monitoring.entities.tagger can be one
    example_text: str = "A text."  # the example request of its serving route in /docs
    prediction_schema: Any = dict[str, Any]  # one prediction's shape in its serving route's answer (a pydantic model)

    def __init__(self, pipeline: str, config: TaskConfig):
        self.pipeline = pipeline  # the pipeline it serves: its params section, files, DVC stages (train@NAME), messages
        self.config = config

    # data -----------------------------------------------------------------------------------
    def read_source(self, source: str | dict[str, str]) -> list[Record]:
        """Raw records from a file, a drop folder or a {train, val, test} mapping (data.format)."""
        return read_source(source, self.config.data.format, self.config.data.encoding)

    def input_columns(self) -> tuple[str, str]:
        """The (input, target) column names of raw records."""
        return self.config.data.text_column, self.config.data.label_column

    def read_fields(self, record: Record) -> tuple[Any, Any, Record]:
        """(input, target, provenance) of a raw record, from the columns of `input_columns`."""
        columns = self.input_columns()
        missing = [c for c in columns if c not in record]
        if missing:
            found = [k for k in record if k not in PROVENANCE]
            raise DataError(
                f"{record['source']}: row {record['row']}: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(found)}; {self.column_hint})"
            )
        provenance = {k: record[k] for k in PROVENANCE if k in record}
        return record[columns[0]], record[columns[1]], provenance

    @property
    def column_hint(self) -> str:
        return f"set {self.pipeline}.data.text_column / label_column in params.yaml"

    @property
    def unknown_label_hint(self) -> str:
        """The fix for a label outside the declared set (validate's quarantine reason)."""
        return f"add it to {self.pipeline}.validate.labels, or map it onto one with {self.pipeline}.validate.label_map"

    @abstractmethod
    def to_example(self, record: Record) -> Record:
        """Map a raw input record to the task's fields; raise DataError naming file and row."""

    @abstractmethod
    def normalise(self, example: Record) -> Record:
        """Clean an example (unicode, whitespace) without changing what it means."""

    @abstractmethod
    def content_key(self, example: Record) -> str:
        """The normalised content that identifies an example (duplicates, split assignment)."""

    def split_key(self, example: Record) -> str:
        """What decides an example's split; examples with the same key always share a split."""
        return self.content_key(example)

    @abstractmethod
    def expectations(self) -> list[Any]:
        """Row-level Great Expectations checks; a row failing any of them is quarantined."""

    def check_columns(self, example: Record) -> Record:
        """Extra columns, derived from an example, that the expectations look at: by default
        `cell_problem`, set by `cell_problems` (see `cell_expectations`)."""
        return {"cell_problem": example.get("cell_problem")}

    @staticmethod
    def cell_expectations() -> list[Any]:
        """The check of `cell_problem`: a row whose text is a JSON list, object or boolean fails it."""
        import great_expectations as gx

        return [gx.expectations.ExpectColumnValuesToBeNull(column="cell_problem")]

    @abstractmethod
    def dataset_problems(self, examples: list[Record]) -> list[str]:
        """Problems with the clean data as a whole that must stop the run."""

    def prepare_augmentation(self, train: list[Record]) -> None:
        """Learn what augmentation draws on from the training split (e.g. entity mentions)."""

    @abstractmethod
    def augment(self, example: Record, method: str, rate: float, rng: random.Random) -> Record:
        """One synthetic variant of a training example."""

    # model ----------------------------------------------------------------------------------
    @abstractmethod
    def load_model(self, path: str) -> tuple[Any, Any]:
        """(model, tokenizer) from a pretrained or fine-tuned folder, with this task's head."""

    @staticmethod
    def load_with_head(auto_class: Any, path: str, labels: list[str]) -> tuple[Any, Any]:
        """(model, tokenizer) with a classification head over `labels` (new, or the fine-tuned one)."""
        from transformers import AutoTokenizer

        model = auto_class.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **pretrained_kwargs(),
        )
        return adapters.attach(model, path), AutoTokenizer.from_pretrained(path, **pretrained_kwargs())

    def peft_task_type(self, model: Any) -> str:
        """The peft TaskType of this task's model (train.peft)."""
        raise ConfigError(f"params.yaml: {self.pipeline}.train.peft is not supported for the {self.pipeline} task")

    def unlabelled_text(self, example: Record) -> str:
        """The text of an example as plain prose, for domain-adaptive pretraining."""
        return example["text"]

    def class_probabilities(self, model: Any, tokenizer: Any, examples: list[Record]) -> tuple[Any, Any]:
        """(probabilities [texts, classes], embeddings [texts, hidden]) for active learning (class_distribution)."""
        raise ConfigError(f"active learning needs one class distribution per text: the {self.pipeline} pipeline has none")

    def pool_column(self) -> str:
        """The column of an unlabelled pool file (`finetune select`) that holds the texts."""
        return self.config.data.text_column

    def training_model(self, model: Any) -> Any:
        """The module the Trainer optimises (the model itself, or the model inside extra layers)."""
        return model

    def export_model(self, trained: Any) -> Any:
        """The plain Hugging Face model to save from what `training_model` returned."""
        return trained

    def trainer_classes(self) -> tuple[Any, Any]:
        """(TrainingArguments class, Trainer class) this task trains with."""
        from transformers import Trainer, TrainingArguments

        return TrainingArguments, Trainer

    def training_arguments(self) -> dict[str, Any]:
        """Task-specific TrainingArguments (e.g. generation settings for sequence-to-sequence)."""
        return {}

    @abstractmethod
    def encode(self, tokenizer: Any, examples: list[Record]) -> list[dict]:
        """Tokenised features (with labels) for training."""

    @abstractmethod
    def data_collator(self, tokenizer: Any) -> Any:
        """Pads each batch to its own longest member (dynamic padding)."""

    @abstractmethod
    def compute_metrics(self, eval_prediction: Any) -> dict[str, float]:
        """Metrics from a Trainer EvalPrediction, keyed without prefix; includes primary_metric."""

    @abstractmethod
    def predict(self, model: Any, tokenizer: Any, examples: list[Record]) -> list[Record]:
        """Predictions for examples, in their order. A served example also holds its request's fields of
        `request_fields` (e.g. a classifier's top_k)."""

    def request_fields(self) -> dict[str, tuple[Any, Any]]:
        """The fields a serving request may have beside `texts`, as pydantic field definitions (type, Field);
        each is handed to `predict` on every example of the request."""
        return {}

    def observation(self, prediction: Record) -> Record:
        """What the monitor and active learning read in a prediction: `counted`, the list of what it counts
        (see `counts`), and `score`, its confidence."""
        raise ConfigError(f"the {self.pipeline} pipeline's predictions count no labels or entity types: the monitor "
                          "and active learning cannot read them")

    @abstractmethod
    def metrics(self, examples: list[Record], predictions: list[Record]) -> dict[str, Any]:
        """The evaluation metrics of predictions against the examples' gold labels."""

    def metrics_by_origin(self, examples: list[Record], predictions: list[Record]) -> dict[str, dict[str, Any]] | None:
        """The metrics on the examples read from `data.source` and on those from the `data.incoming` drop
        folder; None unless the examples hold both."""
        new = from_drop_folder(examples, self.config.data.incoming)
        if all(new) or not any(new):
            return None
        found = {}
        for origin, wanted in (("source", False), ("incoming", True)):
            rows = [i for i, is_new in enumerate(new) if is_new == wanted]
            found[origin] = self.metrics([examples[i] for i in rows], [predictions[i] for i in rows])
        return found

    @abstractmethod
    def metric_statistics(self, examples: list[Record], predictions: list[Record]) -> Any:
        """Per-example sufficient statistics of primary_metric, a float array [examples, columns]:
        summed over any set of the examples, `metric_from_statistics` gives the metric on that set
        (the paired bootstrap of the register stage resamples these rows)."""

    @abstractmethod
    def metric_from_statistics(self, totals: Any) -> Any:
        """primary_metric of each row of summed statistics [rows, columns], as an array [rows];
        equal to `metrics` on the same examples."""

    @abstractmethod
    def write_plots(
        self, examples: list[Record], predictions: list[Record], out_dir: Path, split: str
    ) -> list[Path]:
        """Evaluation plots of one split (DVC data files and images); returns the images."""

    def sample_table(self, examples: list[Record], predictions: list[Record]) -> dict[str, list] | None:
        """A table of example predictions to log to MLflow next to the metrics (None: no table)."""
        return None

    @abstractmethod
    def format_prediction(self, text: str, prediction: Record) -> str:
        """One line of `finetune predict` output."""
