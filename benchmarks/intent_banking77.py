"""Banking77 (77 intents) through the pipeline's own stages.

Splits ../shared/data/banking77/train.csv (text,category; 10,003 rows) stratified into train and
validation (VAL_SHARE per intent, seed SPLIT_SEED), then runs collect, validate, split (the given
splits kept), augment, train and evaluate as the `intents:` pipeline of the project's params.yaml,
its labels the 77 categories and its train settings SETTINGS, in a scratch workspace. Writes
benchmarks/results/intent_banking77.json.

    python benchmarks/intent_banking77.py [--test test.csv] [--set train.epochs=2 ...]

`--test` scores another csv of text,category too (e.g. Banking77's official test split); without
it the test split is the validation split again, and only validation figures are reported.
`--set` overrides a key of the `intents:` section on top of SETTINGS; such runs write
intent_banking77-<overrides>.json.
"""

from __future__ import annotations

import csv
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import (
    SHARED_DATA,
    benchmark_parser,
    cpu_facts,
    pipeline_params,
    run_facts,
    run_in_scratch,
    with_overrides,
    write_result,
)

DATA = SHARED_DATA / "banking77" / "train.csv"
TARGET = {"val_accuracy": 0.92, "train_minutes": 30}
VAL_SHARE, SPLIT_SEED = 0.1, 13
# The train settings chosen for Banking77 (see docs/benchmarks.md#banking77 for what was tried).
SETTINGS = {"epochs": 5, "learning_rate": 2.0e-4, "batch_size": 16, "max_length": 64, "warmup": 0.05,
            "early_stopping_patience": 2}


def read_rows(path: Path, missing: str) -> list[dict[str, str]]:
    """The rows of a text,category csv; exits with one line (`missing` when there is no such file)."""
    if not path.is_file():
        sys.exit(f"{path} not found: {missing}")
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if not rows or not {"text", "category"} <= rows[0].keys():
        sys.exit(f"{path}: expected a csv with columns text,category")
    return rows


def stratified_split(rows: list[dict[str, str]], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): `share` of each category's rows, picked at random with `seed`, go to val."""
    by_category = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    rng, train, val = random.Random(seed), [], []
    for category in sorted(by_category):
        group = by_category[category]
        rng.shuffle(group)
        cut = max(1, round(share * len(group)))
        val += group[:cut]
        train += group[cut:]
    return train, val


def write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    """Write rows as a text,category csv; returns the path as a string."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["text", "category"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--test", type=Path, help="a csv of text,category scored as the test split")
    args = parser.parse_args()
    rows = read_rows(DATA, "this benchmark needs ../shared/data beside the project")
    test_rows = read_rows(args.test, "--test takes a csv of text,category") if args.test else None
    train, val = stratified_split(rows, VAL_SHARE, SPLIT_SEED)
    files = Path(tempfile.mkdtemp(prefix="bench-banking77-data-"))
    source = {"train": write_csv(files / "train.csv", train), "val": write_csv(files / "val.csv", val)}
    source["test"] = write_csv(files / "test.csv", test_rows) if test_rows else source["val"]
    params = pipeline_params("intents", [])
    params["intents"]["train"].update(SETTINGS)
    params = with_overrides(params, "intents", args.set)
    params["intents"]["data"].update(source=source, format="csv", text_column="text", label_column="category")
    params["intents"]["validate"]["labels"] = sorted({row["category"] for row in rows})
    started, load_before = time.time(), os.getloadavg()[0]
    run_in_scratch(params, "intents", ("collect", "validate", "split", "augment", "train", "evaluate"), "bench-banking77-")
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_json

    metrics = load_json(PipelinePaths("intents").metrics)
    facts = run_facts(params, "intents", args.set, started)
    result = {
        "data": f"banking77/train.csv, {VAL_SHARE:.0%} of each intent as val (seed {SPLIT_SEED})"
                + (f"; test: {args.test.name}" if args.test else ""),
        "val_accuracy": round(metrics["val"]["accuracy"], 4),
        "val_f1_macro": round(metrics["val"]["f1_macro"], 4),
        **({"test_accuracy": round(metrics["test"]["accuracy"], 4), "test_f1_macro": round(metrics["test"]["f1_macro"], 4)}
           if args.test else {}),
        "train_minutes": round(facts["train_seconds"] / 60, 1),
        "labels": len(params["intents"]["validate"]["labels"]),
        "val_top_confusions": metrics["val"]["top_confusions"],
        **facts,
        **cpu_facts(),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},  # above cpu_threads: the CPU was shared
        "target": TARGET,
    }
    write_result("intent_banking77", args.set, result)


if __name__ == "__main__":
    main()
