"""The sentiment model `make run` trains on a fresh clone: the bundled sample, over several seeds.

Runs collect, validate, split and augment once with the project's params.yaml (the bundled sample,
data/sample/sentiment.csv) in a scratch workspace, then train and evaluate once per training seed.
Reports each seed's test macro-F1 and per-class F1, the classes never predicted, and the training time;
writes benchmarks/results/sample_run.json (sample_run-<overrides>.json with --set).

    python benchmarks/sample_run.py [--seeds 42 43 44] [--set train.epochs=8 ...]
"""

from __future__ import annotations

import time

from common import ROOT, benchmark_parser, cpu_facts, pipeline_params, write_result
from sentiment_phrasebank import seeds_result

TARGET = {"test_f1_macro_mean": 0.78}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds")
    args = parser.parse_args()
    params = pipeline_params("sentiment", args.set)
    params["sentiment"]["data"]["source"] = str(ROOT / params["sentiment"]["data"]["source"])
    started = time.time()
    result = {
        "data": params["sentiment"]["data"]["source"].removeprefix(str(ROOT) + "/"),
        **seeds_result(params, args.seeds, 1, "bench-sample-"),
        "target": TARGET,
        "train_params": params["sentiment"]["train"],
        "overrides": args.set,
        **cpu_facts(),
        "seconds": round(time.time() - started, 1),
    }
    result["target_met"] = result["test_f1_macro"]["mean"] >= TARGET["test_f1_macro_mean"]
    write_result("sample_run", args.set, result)


if __name__ == "__main__":
    main()
