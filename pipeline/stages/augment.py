"""augment: synthetic variants of the training split only (val and test stay untouched)."""

from __future__ import annotations

import random

from pipeline.config import AugmentConfig
from pipeline.paths import TaskPaths
from pipeline.records import load_records, save_records
from pipeline.tasks.base import Task


def run(task: Task, settings: AugmentConfig, paths: TaskPaths) -> int:
    """Write the training split plus `copies` marked synthetic rows per example; returns the count added."""
    unknown = [m for m in settings.methods if m not in task.augment_methods]
    if unknown:
        raise ValueError(f"{task.name}.augment.methods: unknown {unknown} (known: {', '.join(task.augment_methods)})")
    rng = random.Random(settings.seed)
    train = load_records(paths.split("train"))
    task.prepare_augmentation(train)
    synthetic = []
    for example in train:
        for _ in range(settings.copies if settings.methods else 0):
            method = rng.choice(settings.methods)
            variant = task.augment(example, method, settings.rate, rng)
            if task.content_key(variant) != task.content_key(example):
                synthetic.append({**variant, "synthetic": True, "augmentation": method})
    save_records(paths.augmented_train, train + synthetic)
    print(f"augment[{task.name}]: {len(train)} rows + {len(synthetic)} synthetic")
    return len(synthetic)
