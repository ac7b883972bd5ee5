"""The task types: name -> module, and params.yaml read with each one's config classes.

Adding a task type means one module (its `Task` subclass as `TASK_CLASS`, with its config class)
and one line in TASKS.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.params import PARAMS_FILE, Params, TaskConfig, read_params
from pipeline.tasks.base import Task

TASKS = {
    "sentiment": "pipeline.tasks.sentiment",
    "ner": "pipeline.tasks.ner",
    "translation": "pipeline.tasks.translation",
}


def task_class(name: str) -> type[Task]:
    """The class of the task called `name` (its module defines `TASK_CLASS`)."""
    return importlib.import_module(TASKS[name]).TASK_CLASS


def get_task(name: str, config: TaskConfig) -> Task:
    """Instantiate the task called `name` with its params section."""
    return task_class(name)(config)


def load_params(path: Path = PARAMS_FILE) -> Params:
    """params.yaml (or `path`), each task's section read into its task type's config class."""
    return read_params(Path(path), {name: task_class(name).config_class for name in TASKS})
