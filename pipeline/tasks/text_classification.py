"""Text classification: one label per text (financial sentiment's negative / neutral / positive, a bank's
customer-service intents)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from pipeline.augmentation import BACK_TRANSLATION, METHODS, augment_words
from pipeline.models import batched_by_length
from pipeline.params import DataConfig, TaskConfig, at_least, fraction, labels_problems
from pipeline.records import Record
from pipeline.tasks.base import Counts, Task, cell_problems, cell_text, label_key, label_lookup, never_predicted, normalise_text

TOP_CONFUSIONS = 10  # the most frequent mistakes listed in the metrics and on a large confusion plot


def top_confusions(actual: list[str], predicted: list[str], k: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The k most frequent (actual, predicted) pairs that differ, most frequent first (ties by name)."""
    pairs = Counter((a, p) for a, p in zip(actual, predicted) if a != p)
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return [{"actual": a, "predicted": p, "count": count} for (a, p), count in ranked[:k]]


class LabelScore(BaseModel):
    label: str
    score: float


class Label(LabelScore):
    """One served prediction."""

    top_k: list[LabelScore] | None = Field(
        None, description="with top_k in the request: the k most probable labels, most probable first")


def json_integer(value: Any) -> Any:
    """JSON Schema's integer, as the serving spec publishes it: 2 or 2.0, not `true` or "2" (which pydantic's lax
    mode would read as 1 and 2)."""
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


@dataclass
class ValidateConfig:
    labels: list[str]  # matched ignoring case and surrounding spaces
    label_map: dict[str, str] = field(default_factory=dict)  # a source's own labels onto these, e.g. {0: negative}
    min_chars: int = at_least(0, 3)  # a shorter text is quarantined
    max_chars: int = at_least(1, 2000)  # ... and so is a longer one
    min_rows_per_class: int = at_least(0, 5)  # fewer clean rows for any label stop the run
    max_reject_fraction: float = fraction(0.2)  # a larger share of rejected rows stops the run

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from labels_problems(self.labels, self.label_map)
        if self.min_chars > self.max_chars:
            yield "min_chars", f"({self.min_chars}) must not exceed max_chars ({self.max_chars})"


@dataclass(kw_only=True)
class TextClassificationConfig(TaskConfig):
    AUGMENT_METHODS = (*METHODS, BACK_TRANSLATION)

    data: DataConfig
    validate: ValidateConfig


class TextClassificationTask(Task):
    primary_metric = "f1_macro"
    transformers_task = "text-classification"
    config_class = TextClassificationConfig
    exports_onnx = True
    counts = Counts(noun="predicted label", shift="label_shift", several=False)
    class_distribution = True
    example_text = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
    prediction_schema = Label
    config: TextClassificationConfig

    def __init__(self, name: str, config: TextClassificationConfig):
        super().__init__(name, config)
        self.label_spellings = label_lookup(config.validate.labels, config.validate.label_map)

    @property
    def labels(self) -> list[str]:
        return self.config.validate.labels

    # data -----------------------------------------------------------------------------------
    def to_example(self, record: Record) -> Record:
        text, label, provenance = self.read_fields(record)
        example = {"text": cell_text(text), "label": (cell_text(label) or "").strip() or None, **provenance}  # an empty cell is a missing label
        return cell_problems(example, {"text": text, "label": label})

    def normalise(self, example: Record) -> Record:
        """Normalised text; the label as declared when it matches one (ignoring case and spaces) or label_map maps it."""
        text, label = example["text"], example["label"]
        return {
            **example,
            "text": normalise_text(text) if isinstance(text, str) else text,
            "label": self.label_spellings.get(label_key(label), label) if isinstance(label, str) else label,
        }

    def content_key(self, example: Record) -> str:
        return str(example["text"]).casefold()

    def expectations(self) -> list[Any]:
        import great_expectations as gx

        rules = self.config.validate
        return [
            gx.expectations.ExpectColumnValuesToNotBeNull(column="text"),
            gx.expectations.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=rules.min_chars, max_value=rules.max_chars
            ),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="label"),
            gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=rules.labels),
            *self.cell_expectations(),
        ]

    def dataset_problems(self, examples: list[Record]) -> list[str]:
        counts = {label: 0 for label in self.labels}
        for example in examples:
            if example["label"] in counts:  # validate lets no other label through; never a KeyError here
                counts[example["label"]] += 1
        minimum = self.config.validate.min_rows_per_class
        return [
            f"label '{label}' has {count} clean rows, fewer than {self.pipeline}.validate.min_rows_per_class={minimum}"
            for label, count in counts.items()
            if count < minimum
        ]

    def augment(self, example: Record, method: str, rate: float, rng: random.Random) -> Record:
        words = augment_words(example["text"].split(), method, rate, rng)
        return {**example, "text": " ".join(words)}

    # model ----------------------------------------------------------------------------------
    def load_model(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification

        return self.load_with_head(AutoModelForSequenceClassification, path, self.labels)

    def peft_task_type(self, model: Any) -> str:
        return "SEQ_CLS"

    def encode(self, tokenizer: Any, examples: list[Record]) -> list[dict]:
        label_ids = {label: i for i, label in enumerate(self.labels)}
        encoded = tokenizer(
            [e["text"] for e in examples], truncation=True, max_length=self.config.train.max_length
        )
        return [
            {**{key: values[i] for key, values in encoded.items()}, "labels": label_ids[e["label"]]}
            for i, e in enumerate(examples)
        ]

    def data_collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, eval_prediction: Any) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        predicted = eval_prediction.predictions.argmax(axis=-1)
        gold = eval_prediction.label_ids  # in the Trainer's order, which length grouping may change
        return {
            "accuracy": float(accuracy_score(gold, predicted)),
            "f1_macro": float(f1_score(gold, predicted, average="macro", labels=range(len(self.labels)))),
        }

    def predict(self, model: Any, tokenizer: Any, examples: list[Record]) -> list[Record]:
        """Each example's most probable label and its probability; for an example with `top_k` (a served
        request's), also `top_k`: its k most probable labels with theirs, most probable first."""
        probabilities, _ = self.class_probabilities(model, tokenizer, examples)
        id2label = model.config.id2label
        ranks = (-probabilities).argsort(axis=1, kind="stable")  # most probable first; a tie in label order, as argmax
        predictions = []
        for example, row, order in zip(examples, probabilities, ranks):
            top_k = example.get("top_k") or 0
            ranked = [{"label": id2label[int(i)], "score": float(row[i])} for i in order[: max(top_k, 1)]]
            predictions.append({**ranked[0], "top_k": ranked} if top_k else ranked[0])
        return predictions

    def request_fields(self) -> dict[str, tuple[Any, Any]]:
        """top_k: also answer the k most probable labels, up to the number of labels."""
        return {"top_k": (Annotated[int | None, BeforeValidator(json_integer)], Field(None, ge=1, le=len(self.labels),
                                            description=f"also answer the k most probable labels (1..{len(self.labels)})"))}

    def observation(self, prediction: Record) -> Record:
        return {"counted": [prediction["label"]], "score": prediction["score"]}

    def class_probabilities(self, model: Any, tokenizer: Any, examples: list[Record]) -> tuple[Any, Any]:
        import numpy as np
        import torch

        texts = [normalise_text(e["text"]) for e in examples]  # as in training, whatever the caller sent
        model.eval()

        def run_batch(indices: list[int]) -> list[tuple]:
            batch = tokenizer(
                [texts[i] for i in indices],
                truncation=True,
                max_length=self.config.train.max_length,
                padding=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                output = model(**batch, output_hidden_states=True)
            probs = output.logits.softmax(dim=-1).numpy()
            embeddings = output.hidden_states[-1][:, 0].numpy()  # the [CLS] position the head reads
            return list(zip(probs, embeddings))

        rows = batched_by_length([len(t) for t in texts], 64, run_batch)
        return np.array([p for p, _ in rows]), np.array([e for _, e in rows])

    def metrics(self, examples: list[Record], predictions: list[Record]) -> dict[str, Any]:
        from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

        gold = [e["label"] for e in examples]
        predicted = [p["label"] for p in predictions]
        precision, recall, f1, support = precision_recall_fscore_support(
            gold, predicted, labels=self.labels, zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(gold, predicted)),
            "f1_macro": float(f1_score(gold, predicted, labels=self.labels, average="macro", zero_division=0)),
            "n": len(gold),
            "per_class": {
                label: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(support[i]),
                }
                for i, label in enumerate(self.labels)
            },
            "top_confusions": top_confusions(gold, predicted),
            "never_predicted": never_predicted(self.labels, gold, predicted),
        }

    def metric_statistics(self, examples: list[Record], predictions: list[Record]) -> Any:
        """One confusion-matrix cell per example: column gold * K + predicted holds a 1."""
        import numpy as np

        index, k = {label: i for i, label in enumerate(self.labels)}, len(self.labels)
        cells = [index[e["label"]] * k + index[p["label"]] for e, p in zip(examples, predictions)]
        return np.eye(k * k)[cells]

    def metric_from_statistics(self, totals: Any) -> Any:
        """Macro-F1 over the declared labels from each row's summed confusion matrix."""
        import numpy as np

        from pipeline.significance import f1

        k = len(self.labels)
        confusion = totals.reshape(-1, k, k)  # [rows, gold, predicted]
        correct = np.diagonal(confusion, axis1=1, axis2=2)
        return f1(correct, confusion.sum(axis=1) - correct, confusion.sum(axis=2) - correct).mean(axis=1)

    def write_plots(
        self, examples: list[Record], predictions: list[Record], out_dir: Path, split: str
    ) -> list[Path]:
        from pipeline.plots import confusion_matrix_png
        from pipeline.records import save_json

        pairs = [{"actual": e["label"], "predicted": p["label"]} for e, p in zip(examples, predictions)]
        save_json(out_dir / f"confusion_{split}.json", pairs)  # DVC's confusion template reads this
        image = out_dir / f"confusion_{split}.png"
        actual, predicted = [p["actual"] for p in pairs], [p["predicted"] for p in pairs]
        confusion_matrix_png(
            actual, predicted, self.labels, image, title=f"{self.pipeline}: confusion matrix ({split})",
            top_confusions=top_confusions(actual, predicted),
        )
        return [image]

    def format_prediction(self, text: str, prediction: Record) -> str:
        return f"{prediction['label']}\t{prediction['score']:.3f}\t{text}"


TASK_CLASS = TextClassificationTask
