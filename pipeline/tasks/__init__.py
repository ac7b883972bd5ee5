"""The task registry: name -> module. Adding a task means adding one module and one line here."""

from __future__ import annotations

import importlib

from pipeline.config import TaskConfig
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
