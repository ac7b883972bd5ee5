"""A fine-tuned model as an MLflow pyfunc model, for tasks transformers 5 has no pipeline for.

`mlflow.pyfunc.load_model("models:/translation@champion").predict(["ein Satz", ...])` returns the
task's predictions; `unwrap_python_model()` gives the model and tokenizer themselves.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from pipeline.config import TaskConfig


class TaskModel(mlflow.pyfunc.PythonModel):
    def __init__(self, task_name: str, config: TaskConfig):
        self.task_name, self.config = task_name, config

    def load_context(self, context: Any) -> None:
        from pipeline.tasks import get_task

        self.task = get_task(self.task_name, self.config)
        self.model, self.tokenizer = self.task.load_model(context.artifacts["model"])

    def predict(self, context: Any, model_input: list[str], params: dict | None = None) -> list[dict]:
        return self.task.predict(self.model, self.tokenizer, [{"text": text} for text in model_input])
