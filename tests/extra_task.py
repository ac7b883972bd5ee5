"""A task type written outside the pipeline, to show the seam: one module like this and one line in
pipeline/tasks/__init__.py's TASK_TYPES make a new task type (tests/test_architecture.py registers it).

Question detection: is a text a question or a statement? Its params have their own validate
section (a minimum number of words, not characters) and its model is judged by accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.params import DataConfig, TaskConfig, at_least, labels_problems
from pipeline.records import Record
from pipeline.tasks.text_classification import TextClassificationTask


@dataclass
class QuestionValidateConfig:
    labels: list[str] = field(default_factory=lambda: ["question", "statement"])
    label_map: dict[str, str] = field(default_factory=dict)
    min_words: int = at_least(1, 2)
    max_reject_fraction: float = 0.2

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from labels_problems(self.labels, self.label_map)


@dataclass(kw_only=True)
class QuestionConfig(TaskConfig):
    AUGMENT_METHODS = ("swap",)

    data: DataConfig
    validate: QuestionValidateConfig = field(default_factory=QuestionValidateConfig)


class QuestionTask(TextClassificationTask):
    """Text classification as sentiment does it; its own checks, config and primary metric."""

    primary_metric = "accuracy"
    config_class = QuestionConfig
    exports_onnx = False

    def check_columns(self, example: Record) -> Record:
        return {"words": len(str(example["text"] or "").split())}

    def expectations(self) -> list[Any]:
        import great_expectations as gx

        return [
            gx.expectations.ExpectColumnValuesToNotBeNull(column="text"),
            gx.expectations.ExpectColumnValuesToBeBetween(column="words", min_value=self.config.validate.min_words, max_value=10_000),
            gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=self.labels),
        ]

    def dataset_problems(self, examples: list[Record]) -> list[str]:
        return [] if {e["label"] for e in examples} == set(self.labels) else ["both labels need clean rows"]


TASK_CLASS = QuestionTask
