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
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "financial_phrasebank"
RESULT = ROOT / "benchmarks" / "results" / "sentiment_phrasebank.json"
TARGET = {"test_f1_macro": 0.84, "test_accuracy": 0.86, "train_minutes": 15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default="Sentences_50Agree.txt", help="PhraseBank file under shared/data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override sentiment.KEY")
    args = parser.parse_args()
    source = DATA / args.file
    if not source.exists():
        sys.exit(f"{source} not found: this benchmark needs ../shared/data beside the project")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from pipeline.cli import run_stage
    from pipeline.paths import TaskPaths
    from pipeline.records import load_json

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sentiment"]["data"].update(source=str(source), format="phrasebank")
    for override in args.set:
        key, value = override.split("=", 1)
        *sections, last = key.split(".")
        node = params["sentiment"]
        for section in sections:
            node = node[section]
        node[last] = yaml.safe_load(value)
    result_file = RESULT.with_name(f"{RESULT.stem}-{'_'.join(args.set)}.json") if args.set else RESULT
    workspace = Path(tempfile.mkdtemp(prefix="bench-fpb-"))
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.chdir(workspace)

    started = time.time()
    for stage in ("collect", "validate", "split", "augment", "train", "evaluate"):
        run_stage(stage, "sentiment", Path("params.yaml"))
    paths = TaskPaths("sentiment")
    metrics = load_json(paths.metrics)
    train_log = load_json(paths.history)
    run_info = load_json(paths.train_summary)
    result = {
        "data": f"financial_phrasebank/{args.file}",
        "split_sizes": {s: sum(1 for _ in open(paths.split(s))) for s in ("train", "val", "test")},
        "augmented_train_rows": sum(1 for _ in open(paths.augmented_train)),
        "test_accuracy": round(metrics["test"]["accuracy"], 4),
        "test_f1_macro": round(metrics["test"]["f1_macro"], 4),
        "val_accuracy": round(metrics["val"]["accuracy"], 4),
        "val_f1_macro": round(metrics["val"]["f1_macro"], 4),
        "test_per_class_f1": {k: round(v["f1"], 4) for k, v in metrics["test"]["per_class"].items()},
        "train_seconds": run_info["train_seconds"],
        "train_samples_per_second": run_info["train_samples_per_second"],
        "epochs_run": run_info["epochs_run"],
        "pipeline_seconds": round(time.time() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "history": train_log,
        "model": params["sentiment"]["model"]["name"],
        "train_params": params["sentiment"]["train"],
        "augment_params": params["sentiment"]["augment"],
        "overrides": args.set,
        "cpu_threads": len(os.sched_getaffinity(0)),
        "target": TARGET,
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    print(f"wrote {result_file}")


if __name__ == "__main__":
    main()
