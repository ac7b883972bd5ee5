"""The reference: what the champion sees on in-distribution text it was not trained on, its own
validation split (examples never move between splits, so no champion trained on them). It holds the
champion's counts (labels or entity types) and mean confidence there, the validation split's rate of
words unseen in training, and the training vocabulary.

The train stage keeps the data in the model's run (`monitoring/`: the validation split and the
training vocabulary), so the reference is the champion's own whatever the workspace holds now. It is
computed once per registered version and cached under monitoring/reference/.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.errors import ModelError
from pipeline.monitoring.drift import count, mean_score, observations, oov_rate, words
from pipeline.paths import PipelinePaths
from pipeline.records import Record, load_json, load_records, save_json
from pipeline.tasks import Task

REFERENCES = Path("monitoring/reference")
ARTIFACT_PATH = "monitoring"  # in the model's run: val.jsonl and vocabulary.json


def vocabulary(task: Task, train: list[Record]) -> list[str]:
    """The words of the training texts, sorted."""
    return sorted({w for r in train for w in words(task.unlabelled_text(r))})


def log_reference_data(task: Task, train: list[Record], val_path: Path) -> None:
    """Into the active MLflow run: the validation split and the training vocabulary, from which the
    monitor computes this model's reference when it is champion (kinds of pipeline it watches only)."""
    import mlflow

    if task.counts is None:
        return

    mlflow.log_artifact(str(val_path), ARTIFACT_PATH)
    mlflow.log_dict({"vocabulary": vocabulary(task, train)}, f"{ARTIFACT_PATH}/vocabulary.json")


def reference(task: Task, model, tokenizer, version: Any, outputs: Path) -> dict:
    """The behaviour of the registered `version` (an MLflow ModelVersion, loaded as model and tokenizer)
    on its own validation data, cached per version."""
    cache = REFERENCES / f"{version.name}-v{version.version}.json"
    if cache.exists():
        return load_json(cache)
    words_seen, val = reference_data(task, version, outputs)
    ref = {"model_version": str(version.version), "data_hash": version.tags.get("data_hash"),
           **figures(task, val, observations(task, task.predict(model, tokenizer, val)), words_seen)}
    save_json(cache, ref)  # whole: a monitor run beside this one reads the old file or this one
    return ref


def figures(task: Task, val: list[Record], observed: list[Record], words_seen: list[str]) -> dict:
    """What drift is measured against: the counts (labels or entity types) and mean confidence of the
    predictions on the validation examples (`observations`), their rate of words unseen in training, and the vocabulary."""
    return {
        "labels": count(observed),
        "mean_confidence": mean_score(observed),
        "oov_rate": oov_rate([task.unlabelled_text(r) for r in val], set(words_seen)),
        "vocabulary": words_seen,
    }


def reference_data(task: Task, version: Any, outputs: Path) -> tuple[list[str], list[Record]]:
    """(training vocabulary, validation examples) of a registered version, from its run. A version trained
    before runs kept them: from the pipeline's `outputs`, when they still hold the data it was trained on."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="reference-") as downloads:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=ARTIFACT_PATH, dst_path=downloads))
        except (MlflowException, OSError):
            folder = Path(downloads) / "none"
        if (folder / "val.jsonl").exists() and (folder / "vocabulary.json").exists():
            return load_json(folder / "vocabulary.json")["vocabulary"], load_records(folder / "val.jsonl")
    paths = PipelinePaths(task.pipeline)
    files = [outputs / p for p in (paths.augmented_train, paths.split("val"), paths.split("test"))]
    if all(f.exists() for f in files) and tracking.files_hash(files) == version.tags.get("data_hash"):
        return vocabulary(task, load_records(files[0])), load_records(files[1])
    raise ModelError(f"{version.name} v{version.version}: its run {version.run_id} holds no {ARTIFACT_PATH}/ reference data (it was "
                     f"trained before runs kept it) and {outputs} no longer holds the data it was trained on: promote a newer version "
                     f"(python -m flows.retrain --pipeline {task.pipeline})")
