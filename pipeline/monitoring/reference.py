"""The reference: what the champion sees on in-distribution text it was not trained on, the
validation split (examples never move between splits, so no champion trained on them). It holds
the champion's counts (labels or entity types) and mean confidence there, the validation split's
rate of words unseen in the training split, and the training vocabulary; computed once per
champion version and cached under monitoring/reference/.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline import tracking
from pipeline.monitoring.drift import counted, mean_score, oov_rate, words
from pipeline.paths import TaskPaths
from pipeline.records import load_json, load_records, save_json
from pipeline.tasks.base import Task

REFERENCES = Path("monitoring/reference")


def reference(task: Task, model, tokenizer, version: str, outputs: Path) -> dict:
    """The champion's behaviour on in-distribution text, from the splits under `outputs` (the folder the
    pipeline's stages wrote), cached per version."""
    cache = REFERENCES / f"{task.name}-v{version}.json"
    if cache.exists():
        return load_json(cache)
    root, paths = outputs, TaskPaths(task.name)
    vocabulary = {w for r in load_records(root / paths.split("train")) for w in words(task.unlabelled_text(r))}
    val = load_records(root / paths.split("val"))
    predictions = task.predict(model, tokenizer, val)
    ref = {
        "model_version": version,
        "data_hash": tracking.files_hash([root / p for p in (paths.augmented_train, paths.split("val"), paths.split("test"))]),
        "labels": dict(Counter(c for p in predictions for c in counted(p))),
        "mean_confidence": mean_score(predictions),
        "oov_rate": oov_rate([task.unlabelled_text(r) for r in val], vocabulary),
        "vocabulary": sorted(vocabulary),
    }
    save_json(cache, ref)
    return ref
