"""The training recipe at 1, 2, 4 and 8 epochs, on data a user retrains on: Financial PhraseBank AllAgree
as the source, every FiQA/SemEval text (their scores mapped to three classes as in label_budget.py) as one
labelled batch in the drop folder.

Runs collect, validate, split and augment once in a scratch workspace, then the pipeline's own train and
evaluate stages once per epoch count and training seed, each in a fresh process. Records each run's
validation and test macro-F1, each class's test F1, the classes never predicted, and the scores on each
origin; writes benchmarks/results/epoch_robustness.json (epoch_robustness-<overrides>.json with --set)
after every run; the runs found there (same epochs and seed) are kept, not rerun.

    python benchmarks/epoch_robustness.py [--epochs 1 2 4 8] [--seeds 42 43 44] [--set train.warmup=0.2 ...]
"""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path

from common import (
    SHARED_DATA,
    benchmark_parser,
    cpu_facts,
    pipeline_params,
    result_file,
    run_folder,
    run_in_scratch,
    run_variant,
    split_sizes,
    spread,
    with_overrides,
)
from label_budget import THRESHOLD, new_source

SOURCE = SHARED_DATA / "financial_phrasebank" / "Sentences_AllAgree.txt"


def drop_batch(path: Path) -> int:
    """Every FiQA/SemEval text with its label, as one csv batch at `path`; how many."""
    rows = new_source()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return len(rows)


def run_figures(run: dict, epochs: int) -> dict:
    """One run's scores: what a collapsed class looks like shows in per-class F1 and never_predicted."""
    val, test, summary = run["metrics"]["val"], run["metrics"]["test"], run["summary"]
    return {
        "epochs": epochs,
        "seed": run["seed"],
        "val_f1_macro": round(val["f1_macro"], 4),
        "test_f1_macro": round(test["f1_macro"], 4),
        "test_per_class_f1": {k: round(v["f1"], 4) for k, v in test["per_class"].items()},
        "never_predicted": {"val": val["never_predicted"], "test": test["never_predicted"]},
        "test_by_origin_f1_macro": {k: round(v["f1_macro"], 4) for k, v in test.get("by_origin", {}).items()},
        "epochs_run": summary["epochs_run"],
        "batch_size": summary["batch_size"],
        "optimizer_steps": summary["optimizer_steps"],
        "train_seconds": summary["train_seconds"],
    }


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds")
    args = parser.parse_args()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: this benchmark needs ../shared/data beside the project")
    params = pipeline_params("sentiment", ["augment.copies=0", "registry.onnx=null", *args.set])
    params["sentiment"]["data"].update(source=str(SOURCE), format="phrasebank", incoming="data/incoming")
    output = result_file("epoch_robustness", args.set)
    started = time.time()
    run_in_scratch(params, "sentiment", (), "bench-epochs-")  # an empty workspace, now the cwd
    batch = drop_batch(Path("data/incoming/fiqa_semeval.csv"))
    from pipeline.cli import run_stage

    for stage in ("collect", "validate", "split", "augment"):
        run_stage(stage, "sentiment", Path("params.yaml"))
    sizes = split_sizes("sentiment")
    earlier = json.loads(output.read_text()) if output.exists() else {}
    runs = [r for r in earlier.get("runs", []) if r["epochs"] in args.epochs and r["seed"] in args.seeds]  # the same split: kept
    for epochs in args.epochs:
        for seed in args.seeds:
            if any((r["epochs"], r["seed"]) == (epochs, seed) for r in runs):
                continue
            variant = with_overrides(copy.deepcopy(params), "sentiment", [f"train.epochs={epochs}", f"train.seed={seed}"])
            run = run_variant(variant, "sentiment", ("train", "evaluate"), run_folder(f"epochs-{epochs}-seed-{seed}"))
            runs.append(run_figures({"seed": seed, **run}, epochs))
            print(f"epoch_robustness: {epochs} epochs, seed {seed}: test macro-F1 {runs[-1]['test_f1_macro']:.4f}, "
                  f"never predicted {runs[-1]['never_predicted']['test'] or 'none'}", flush=True)
            output.write_text(json.dumps({
                "data": {"source": "financial_phrasebank/Sentences_AllAgree.txt", "drop_folder_batch": batch,
                         "batch": f"fiqa_semeval, every text, |score| <= {THRESHOLD} neutral"},
                "split_sizes": sizes,
                "by_epochs": {str(e): summary([r for r in runs if r["epochs"] == e]) for e in args.epochs if any(r["epochs"] == e for r in runs)},
                "runs": runs,
                "train_params": params["sentiment"]["train"],
                "overrides": args.set,
                **({"note": earlier["note"]} if "note" in earlier else {}),
                **cpu_facts(),
                "seconds": round(time.time() - started),
            }, indent=2) + "\n")


def summary(runs: list[dict]) -> dict:
    """One epoch count over its seeds: test macro-F1, and how many runs left a class unpredicted."""
    return {"test_f1_macro": spread([r["test_f1_macro"] for r in runs]),
            "val_f1_macro": spread([r["val_f1_macro"] for r in runs]),
            "runs_with_a_class_never_predicted": sum(bool(r["never_predicted"]["test"] or r["never_predicted"]["val"]) for r in runs),
            "optimizer_steps": sorted({r["optimizer_steps"] for r in runs}),
            "train_minutes": spread([r["train_seconds"] / 60 for r in runs], 1)}  # wall-clock: the cores may be shared


if __name__ == "__main__":
    main()
