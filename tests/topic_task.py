"""A task type written outside the pipeline whose predictions have a shape of their own, to show that
serving, the monitor and active learning ask the task type rather than knowing it
(tests/test_architecture.py registers it with one line and serves, monitors and ranks with it).

Topic tagging: every topic (of the section's labels) at least `threshold` probable, so a text has any
number of them. It trains as text classification does; what differs is what it predicts and how that
is served, counted and ranked. It subclasses a built-in type on purpose: code outside pipeline/tasks/
that asked `isinstance(task, TextClassificationTask)` would give it a classifier's top_k and answers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pipeline.records import Record
from pipeline.tasks.base import Counts
from pipeline.tasks.text_classification import TextClassificationTask


class Topic(BaseModel):
    topic: str
    score: float


class Topics(BaseModel):
    """One served prediction."""

    topics: list[Topic] = Field(description="every topic at least `threshold` probable, most probable first")
    score: float = Field(description="the most probable topic's probability")


class TopicTask(TextClassificationTask):
    counts = Counts(noun="topic", shift="topic_mix", several=True)
    class_distribution = False  # ranked for labelling least confident first, by `observation`
    example_text = "Nokia cut 500 jobs as handset sales fell."
    prediction_schema = Topics

    def default_threshold(self) -> float:
        """A topic is one when it is more probable than if all were equally so."""
        return 1 / len(self.labels)

    def request_fields(self) -> dict[str, tuple[Any, Any]]:
        return {"threshold": (float | None, Field(None, gt=0, le=1, description="the least probability of a topic"))}

    def predict(self, model: Any, tokenizer: Any, examples: list[Record]) -> list[Record]:
        probabilities, _ = self.class_probabilities(model, tokenizer, examples)
        id2label = model.config.id2label
        predictions = []
        for example, row in zip(examples, probabilities):
            threshold = example.get("threshold") or self.default_threshold()
            order = (-row).argsort(kind="stable")
            topics = [{"topic": id2label[int(i)], "score": float(row[i])} for i in order if row[i] >= threshold]
            predictions.append({"topics": topics, "score": float(row.max())})
        return predictions

    def observation(self, prediction: Record) -> Record:
        return {"counted": [t["topic"] for t in prediction["topics"]], "score": prediction["score"]}

    def format_prediction(self, text: str, prediction: Record) -> str:
        return f"{', '.join(t['topic'] for t in prediction['topics']) or '-'}\t{text}"


TASK_CLASS = TopicTask
