"""The sentiment model `make run` trains on a fresh clone: the bundled sample, over several seeds.

Runs collect, validate, split and augment once with the project's params.yaml (the bundled sample,
data/sample/sentiment.csv) in a scratch workspace, then train and evaluate once per training seed.
Reports each seed's test macro-F1 and per-class F1, the classes never predicted, and the training time;
writes benchmarks/results/sample_run.json (sample_run-<overrides>.json with --set).

    python benchmarks/sample_run.py [--seeds 42 43 44] [--set train.epochs=8 ...]
"""

from __future__ import annotations

import time

from common import ROOT, benchmark_parser, cpu_facts, pipeline_params, run_in_scratch, run_seeds, spread, write_result
from sentiment_phrasebank import seed_figures

TARGET = {"test_f1_macro_mean": 0.78}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds")
    args = parser.parse_args()
    params = pipeline_params("sentiment", args.set)
    params["sentiment"]["data"]["source"] = str(ROOT / params["sentiment"]["data"]["source"])
    started = time.time()
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment"), "bench-sample-")
    runs = run_seeds(params, "sentiment", args.seeds, jobs=1)
    seeds = [{**seed_figures(run, cpu_facts()["cpu_threads"]),
              "never_predicted": {split: run["metrics"][split]["never_predicted"] for split in ("val", "test")}} for run in runs]
    result = {
        "data": params["sentiment"]["data"]["source"].removeprefix(str(ROOT) + "/"),
        "split_sizes": {s: sum(1 for _ in open(f"data/split/sentiment/{s}.jsonl")) for s in ("train", "val", "test")},
        **{key: spread([s[key] for s in seeds]) for key in ("test_f1_macro", "test_accuracy", "val_f1_macro", "train_cpu_minutes")},
        "target_met": spread([s["test_f1_macro"] for s in seeds])["mean"] >= TARGET["test_f1_macro_mean"],
        "target": TARGET,
        "seeds": seeds,
        "train_params": params["sentiment"]["train"],
        "overrides": args.set,
        **cpu_facts(),
        "seconds": round(time.time() - started, 1),
    }
    write_result("sample_run", args.set, result)


if __name__ == "__main__":
    main()
