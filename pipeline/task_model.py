"""A fine-tuned model as an MLflow pyfunc model, for tasks transformers 5 has no pipeline for.

`mlflow.pyfunc.load_model("models:/translation@champion").predict(["ein Satz", ...])` returns the
task's predictions; `unwrap_python_model()` gives the model and tokenizer themselves.

The pipeline's params section travels with the model as plain YAML (the artifact `config`), read
back through the params checks when the model loads: nothing of the config classes is pickled, so
they can move or change without stranding a registered model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import yaml

from pipeline.params import TaskConfig


def write_config(pipeline: str, config: TaskConfig, path: Path) -> Path:
    """The pipeline's name and params section as YAML at `path`: the `config` artifact of its TaskModel."""
    path.write_text(yaml.safe_dump({"pipeline": pipeline, "section": dataclasses.asdict(config)}, sort_keys=False), encoding="utf-8")
    return path


class TaskModel(mlflow.pyfunc.PythonModel):
    """Loads the model artifact with the task type of the section in the config artifact (see write_config)."""

    def load_context(self, context: Any) -> None:
        from pipeline.tasks import get_task, read_section

        if "config" in context.artifacts:
            saved = yaml.safe_load(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
            pipeline, config = saved["pipeline"], read_section(saved["pipeline"], saved["section"])
        else:  # registered before the section was kept as YAML: this object was pickled holding both
            pipeline, config = self.task_name, self.config
        self.task = get_task(pipeline, config)
        self.model, self.tokenizer = self.task.load_model(context.artifacts["model"])

    def predict(self, context: Any, model_input: list[str], params: dict | None = None) -> list[dict]:
        return self.task.predict(self.model, self.tokenizer, [{"text": text} for text in model_input])
