"""Multi30k German -> English through the pipeline's own stages.

Trains on multi30k/train.{de,en} (29,000 pairs) and evaluates on val.{de,en} (1,014 pairs)
with the `translation:` settings of params.yaml, in a scratch workspace, and writes
benchmarks/results/mt_multi30k.json. The source keeps Multi30k's split: val = test = val, so
the best epoch is chosen on the set that is reported (there is no test set here).

    python benchmarks/mt_multi30k.py [--set model.num_beams=1 --set train.max_minutes=30 ...]

The default model is the bundled MiniLM (uncased English WordPiece) warm-started as encoder and
decoder, so the direction is German -> English and BLEU is lowercased (13a tokenisation); the
signature in the result says so. Training stops after 60 minutes (LARGE_DATA below).
"""

from __future__ import annotations

import argparse
import sys
import time

from common import SHARED_DATA, pipeline_params, run_facts, run_in_scratch, write_result

DATA = SHARED_DATA / "multi30k"
TARGET = {"val_bleu": 30.0, "train_minutes": 60}
LARGE_DATA = ["train.epochs=2", "train.batch_size=32", "train.warmup=0.05", "train.max_minutes=60"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override translation.KEY")
    args = parser.parse_args()
    if not all((DATA / f"{split}.{language}").exists() for split in ("train", "val") for language in ("de", "en")):
        sys.exit(f"{DATA} lacks train/val .de/.en: this benchmark needs ../shared/data beside the project")
    params = pipeline_params("translation", LARGE_DATA + args.set)
    params["translation"]["data"].update(
        source={"train": str(DATA / "train"), "val": str(DATA / "val"), "test": str(DATA / "val")}, format="parallel"
    )
    params["translation"]["languages"] = {"source": "de", "target": "en"}
    started = time.time()
    run_in_scratch(params, "translation", ("collect", "validate", "split", "augment", "train", "evaluate"), "bench-mt-")
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_json

    scores = load_json(PipelinePaths("translation").metrics)["val"]
    result = {
        "data": "multi30k/train -> val",
        "direction": scores["direction"],
        "val_bleu": round(scores["bleu"], 2),
        "val_chrf": round(scores["chrf"], 2),
        "signature": scores["signature"],
        "num_beams": params["translation"]["model"]["num_beams"],
        **run_facts(params, "translation", args.set, started),
        "target": TARGET,
    }
    write_result("mt_multi30k", args.set, result)


if __name__ == "__main__":
    main()
