"""split: train / val / test as a deterministic function of each example's normalised content.

An example's split never changes as data grows, and identical texts never straddle splits.
Hashing is uniform, so each class lands in the splits in roughly the configured ratio.
A source that comes with its own splits (`given_split`) keeps them.
"""

from __future__ import annotations

import hashlib

from pipeline.errors import DataError
from pipeline.params import SPLIT_NAMES, Params, SplitConfig
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.records import load_records, save_records
from pipeline.tasks import Task


def assign_split(key: str, ratios: SplitConfig) -> str:
    """Map a content key to a split through a stable hash (the same on every machine and run)."""
    fraction = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if fraction < ratios.test:
        return "test"
    if fraction < ratios.test + ratios.val:
        return "val"
    return "train"


def run(task: Task, params: Params, paths: PipelinePaths) -> dict[str, int]:
    """Write the train, val and test tables; returns their sizes."""
    ratios = task.config.split
    ensure_writable(paths.split_dir)
    splits: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    for example in load_records(paths.clean):
        name = example.get("given_split") or assign_split(task.split_key(example), ratios)
        splits[name].append(example)
    for name, examples in splits.items():
        if not examples:
            raise DataError(f"split '{name}' of {paths.clean} is empty: too little data for the configured ratios ({task.pipeline}.split)")
        save_records(paths.split(name), examples)
    sizes = {name: len(examples) for name, examples in splits.items()}
    print(f"split[{task.pipeline}]: " + ", ".join(f"{n} {c}" for n, c in sizes.items()))
    return sizes
