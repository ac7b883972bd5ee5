"""A fine-tuned model as an MLflow pyfunc model, for tasks transformers 5 has no pipeline for.

`mlflow.pyfunc.load_model("models:/translation@champion").predict(["ein Satz", ...])` returns the
task's predictions; `unwrap_python_model()` gives the model and tokenizer themselves.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import mlflow.pyfunc

from pipeline.params import TaskConfig

# Where each config class lived when it was pickled into a registered pyfunc model: params.yaml's
# sections were all in pipeline/config.py before task types got their own. A model registered then
# must still load (register re-scores the champion), so that old path resolves to the classes today.
SHARED_SECTIONS = ("SourceConfig", "DataConfig", "SplitConfig", "BackTranslationConfig", "AugmentConfig", "ModelConfig",
                   "PretrainConfig", "PeftSettings", "DistillationConfig", "TrainConfig", "SearchConfig",
                   "ActiveLearningConfig", "PromotionConfig", "RegistryConfig", "TaskConfig")
LEGACY_CONFIG_CLASSES = {  # name in pipeline.config -> (module, name) today
    **{name: ("pipeline.params", name) for name in SHARED_SECTIONS},
    "ValidateConfig": ("pipeline.tasks.text_classification", "ValidateConfig"),
    "NerValidateConfig": ("pipeline.tasks.token_classification", "TokenValidateConfig"),
    "NerModelConfig": ("pipeline.tasks.token_classification", "TokenModelConfig"),
    "NerConfig": ("pipeline.tasks.token_classification", "TokenClassificationConfig"),
    **{name: ("pipeline.tasks.translation", name)
       for name in ("TranslationValidateConfig", "TranslationModelConfig", "LanguagesConfig", "TranslationConfig")},
}


def legacy_config_module() -> types.ModuleType:
    """A stand-in for the old pipeline.config, holding today's classes under their old names."""
    module = types.ModuleType("pipeline.config", "config classes of models registered before task types had their own")
    for old, (home, name) in LEGACY_CONFIG_CLASSES.items():
        setattr(module, old, getattr(importlib.import_module(home), name))
    return module


sys.modules.setdefault("pipeline.config", legacy_config_module())


class TaskModel(mlflow.pyfunc.PythonModel):
    def __init__(self, task_name: str, config: TaskConfig):
        self.task_name, self.config = task_name, config

    def load_context(self, context: Any) -> None:
        from pipeline.tasks import get_task

        self.task = get_task(self.task_name, self.config)
        self.model, self.tokenizer = self.task.load_model(context.artifacts["model"])

    def predict(self, context: Any, model_input: list[str], params: dict | None = None) -> list[dict]:
        return self.task.predict(self.model, self.tokenizer, [{"text": text} for text in model_input])
