"""The task registry: name -> module. Adding a task means adding one module and one line here."""

from __future__ import annotations

import importlib

from pipeline.config import TaskConfig
from pipeline.tasks.base import Task

TASKS = {
    "sentiment": "pipeline.tasks.sentiment",
}


def get_task(name: str, config: TaskConfig) -> Task:
    """Instantiate the task called `name` (its module defines `TASK_CLASS`)."""
    module = importlib.import_module(TASKS[name])
    return module.TASK_CLASS(config)
