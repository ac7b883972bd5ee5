"""The task types, and params.yaml read with each one's config classes.

A pipeline is a section of params.yaml with a `type`: two text-classification pipelines (financial
sentiment, customer-service intents) are two sections of one type. Adding a task type is one module
(its `Task` subclass as `TASK_CLASS`, with its config class) and one line in TASK_TYPES; adding a
pipeline of an existing type is params alone.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.params import PARAMS_FILE, Params, TaskConfig, pipeline_section, read_params
from pipeline.tasks.base import Task

TASK_TYPES = {
    "text_classification": "pipeline.tasks.text_classification",
    "token_classification": "pipeline.tasks.token_classification",
    "translation": "pipeline.tasks.translation",
}
# Sections that predate `type`: their name says it, so params.yaml files written then keep working.
IMPLIED_TYPES = {"sentiment": "text_classification", "ner": "token_classification", "translation": "translation"}


def task_class(task_type: str) -> type[Task]:
    """The class of a task type (its module defines `TASK_CLASS`)."""
    return importlib.import_module(TASK_TYPES[task_type]).TASK_CLASS


def get_task(pipeline: str, config: TaskConfig) -> Task:
    """The task (its type's behaviour) of the pipeline called `pipeline`, with its params section."""
    return task_class(config.type or IMPLIED_TYPES[pipeline])(pipeline, config)


def task_types() -> dict[str, type[Task]]:
    """Every task type's class, by name."""
    return {kind: task_class(kind) for kind in TASK_TYPES}


def load_params(path: Path = PARAMS_FILE) -> Params:
    """params.yaml (or `path`), each pipeline's section read into its task type's config class."""
    return read_params(Path(path), task_types(), IMPLIED_TYPES)


def read_section(pipeline: str, section: dict) -> TaskConfig:
    """A pipeline's params section from plain data (a registered model keeps its own), checked as params.yaml's are."""
    return pipeline_section(pipeline, section, task_types(), IMPLIED_TYPES)
