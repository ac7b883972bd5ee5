"""Financial PhraseBank (Sentences_50Agree) through the pipeline's own stages.

Runs collect, validate, split (the same 60/20/20 content-hash split), augment, train and
evaluate with the settings of the project's params.yaml, only the source pointed at the
PhraseBank file, in a scratch workspace, and writes benchmarks/results/sentiment_phrasebank.json.

    python benchmarks/sentiment_phrasebank.py [--file Sentences_50Agree.txt] [--set train.epochs=6 ...]

`--set` overrides a key of the `sentiment:` section for an experiment; results of runs with
overrides go to benchmarks/results/sentiment_phrasebank-<overrides>.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import SHARED_DATA, run_facts, run_in_scratch, task_params, write_result

DATA = SHARED_DATA / "financial_phrasebank"
TARGET = {"test_f1_macro": 0.84, "test_accuracy": 0.86, "train_minutes": 15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default="Sentences_50Agree.txt", help="PhraseBank file under shared/data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override sentiment.KEY")
    args = parser.parse_args()
    source = DATA / args.file
    if not source.exists():
        sys.exit(f"{source} not found: this benchmark needs ../shared/data beside the project")
    params = task_params("sentiment", args.set)
    params["sentiment"]["data"].update(source=str(source), format="phrasebank")
    started = time.time()
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment", "train", "evaluate"), "bench-fpb-")
    from pipeline.paths import TaskPaths
    from pipeline.records import load_json

    metrics = load_json(TaskPaths("sentiment").metrics)
    result = {
        "data": f"financial_phrasebank/{args.file}",
        "test_accuracy": round(metrics["test"]["accuracy"], 4),
        "test_f1_macro": round(metrics["test"]["f1_macro"], 4),
        "val_accuracy": round(metrics["val"]["accuracy"], 4),
        "val_f1_macro": round(metrics["val"]["f1_macro"], 4),
        "test_per_class_f1": {k: round(v["f1"], 4) for k, v in metrics["test"]["per_class"].items()},
        **run_facts(params, "sentiment", args.set, started),
        "target": TARGET,
    }
    write_result("sentiment_phrasebank", args.set, result)


if __name__ == "__main__":
    main()
