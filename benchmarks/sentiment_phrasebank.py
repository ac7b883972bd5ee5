"""Financial PhraseBank (Sentences_50Agree) through the pipeline's own stages, over several seeds.

Runs collect, validate, split (the same 60/20/20 content-hash split) and augment once with the
settings of the project's params.yaml, only the source pointed at the PhraseBank file, in a
scratch workspace; then train and evaluate once per training seed. Reports each seed's figures
and their mean and standard deviation; writes benchmarks/results/sentiment_phrasebank.json.

    python benchmarks/sentiment_phrasebank.py [--seeds 42 43 44] [--jobs 2] [--set train.epochs=6 ...]

`--jobs 2` trains two seeds at once, each pinned to its share of the cores (on 2 cores: one
thread each, so a seed's training seconds are its CPU-seconds). `--set` overrides a key of the
`sentiment:` section; results of runs with overrides go to sentiment_phrasebank-<overrides>.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import (
    SHARED_DATA,
    benchmark_parser,
    cpu_facts,
    pipeline_params,
    run_in_scratch,
    run_seeds,
    split_sizes,
    spread,
    write_result,
)

DATA = SHARED_DATA / "financial_phrasebank"
TARGET = {"test_f1_macro": 0.84, "test_accuracy": 0.86, "train_cpu_minutes": 15}


def seed_figures(run: dict, cores: int) -> dict:
    """One seed's scores, time and memory."""
    test, val, summary = run["metrics"]["test"], run["metrics"]["val"], run["summary"]
    return {
        "seed": run["seed"],
        "test_f1_macro": round(test["f1_macro"], 4),
        "test_accuracy": round(test["accuracy"], 4),
        "val_f1_macro": round(val["f1_macro"], 4),
        "test_per_class_f1": {k: round(v["f1"], 4) for k, v in test["per_class"].items()},
        "train_seconds": summary["train_seconds"],
        "train_cpu_minutes": round(summary["train_seconds"] * cores / 60, 1),
        "epochs_run": summary["epochs_run"],
        "peak_rss_mb": run["peak_rss_mb"],
        "never_predicted": {split: run["metrics"][split]["never_predicted"] for split in ("val", "test")},
    }


def seeds_result(params: dict, seeds: list[int], jobs: int, prefix: str) -> dict:
    """The data stages once in a new scratch workspace (then the cwd), train and evaluate once per seed:
    the split sizes, each figure's spread over the seeds, and each seed's figures."""
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment"), prefix)
    cores_per_seed = max(1, cpu_facts()["cpu_threads"] // jobs)
    figures = [seed_figures(run, cores_per_seed) for run in run_seeds(params, "sentiment", seeds, jobs)]
    return {
        "split_sizes": split_sizes("sentiment"),
        "train_rows": sum(1 for _ in open("data/augmented/sentiment.jsonl")),
        **{key: spread([f[key] for f in figures]) for key in ("test_f1_macro", "test_accuracy", "val_f1_macro", "train_cpu_minutes")},
        "seeds": figures,
    }


def combined_seeds(seeds: list[int]) -> dict:
    """Test scores of the seed models combined two ways: an ensemble (their class probabilities
    averaged: one forward pass per seed) and a uniform soup (their weights averaged: one model)."""
    import numpy as np

    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params

    config = load_params(Path("params.yaml")).pipeline("sentiment")
    task, test = get_task("sentiment", config), load_records("data/split/sentiment/test.jsonl")

    def scores(probabilities) -> dict:
        found = task.metrics(test, [{"label": config.validate.labels[i]} for i in probabilities.argmax(axis=1)])
        return {"test_f1_macro": round(found["f1_macro"], 4), "test_accuracy": round(found["accuracy"], 4)}

    probabilities, states = [], []
    for seed in seeds:
        model, tokenizer = task.load_model(f"seed-{seed}/models/sentiment")
        probabilities.append(task.class_probabilities(model, tokenizer, test)[0])
        states.append(model.state_dict())
    model.load_state_dict({name: sum(state[name] for state in states) / len(states) if value.is_floating_point() else value
                           for name, value in states[0].items()})
    return {"ensemble": scores(np.mean(probabilities, axis=0)), "soup": scores(task.class_probabilities(model, tokenizer, test)[0])}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--file", default="Sentences_50Agree.txt", help="PhraseBank file under shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, the cores split between them")
    args = parser.parse_args()
    source = DATA / args.file
    if not source.exists():
        sys.exit(f"{source} not found: this benchmark needs ../shared/data beside the project")
    params = pipeline_params("sentiment", args.set)
    params["sentiment"]["data"].update(source=str(source), format="phrasebank")
    started = time.time()
    result = {
        "data": f"financial_phrasebank/{args.file}",
        **seeds_result(params, args.seeds, args.jobs, "bench-fpb-"),
        "seeds_combined": combined_seeds(args.seeds) if len(args.seeds) > 1 else None,
        "train_params": params["sentiment"]["train"],
        "augment_params": params["sentiment"]["augment"],
        "overrides": args.set,
        "jobs": args.jobs,
        **cpu_facts(),
        "seconds": round(time.time() - started, 1),
        "target": TARGET,
    }
    write_result("sentiment_phrasebank", args.set, result)


if __name__ == "__main__":
    main()
