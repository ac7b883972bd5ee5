"""Active learning on Financial PhraseBank (Sentences_50Agree): uncertainty vs random selection.

A simulated loop on the pipeline's train split: start with 10% of it labelled (the same random
10% for both strategies), train, score the rest (the pool) with the model, "label" the k texts
the strategy picks (their gold labels are revealed), and train again from the pretrained model,
until half the split is labelled. Every model is scored on the test split; a model trained on
the whole split is the reference. Writes benchmarks/results/active_learning.json and .png.

    python benchmarks/active_learning.py [--strategy entropy] [--set train.epochs=5 ...]
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from common import PHRASEBANK, RESULTS, benchmark_parser, phrasebank_params, run_in_scratch, write_result

TARGET = {"uncertainty_labels_to_reach_full_minus_1pt_at_most": 0.5, "uncertainty_beats_random": "every round"}
START, STEP, STOP = 0.10, 0.20, 0.50  # shares of the train split: first labelled set, added per round, last round


def train_and_score(task, config, labelled: list, val: list, test: list) -> tuple[float, object, object]:
    """Fine-tune from the pretrained model on `labelled`; (test macro-F1, model, tokenizer)."""
    from pipeline.stages.train import base_model_path, build_trainer
    from pipeline.paths import TaskPaths

    with tempfile.TemporaryDirectory(prefix="al-") as output:
        trainer, tokenizer = build_trainer(task, config, labelled, val, Path(output), base_model_path(config, TaskPaths(task.name)))
        trainer.train()
    model = trainer.model
    return task.metrics(test, task.predict(model, tokenizer, test))["f1_macro"], model, tokenizer


def simulate(task, config, train: list, val: list, test: list, strategy: str, seed: int) -> list[dict]:
    """One active-learning run; a record per round: labelled count and test macro-F1."""
    from pipeline.active_learning import pick, uncertainty

    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    labelled, pool = order[: round(START * len(train))], order[round(START * len(train)):]
    step = round(STEP * len(train))
    rounds = []
    while True:
        started = time.time()
        f1, model, tokenizer = train_and_score(task, config, [train[i] for i in labelled], val, test)
        rounds.append({"labelled": len(labelled), "test_f1_macro": round(f1, 4), "seconds": round(time.time() - started, 1)})
        print(f"active_learning[{strategy}]: {len(labelled)} labelled -> test macro-F1 {f1:.4f}", flush=True)
        if len(labelled) >= round(STOP * len(train)):
            return rounds
        probabilities, embeddings = task.class_probabilities(model, tokenizer, [train[i] for i in pool])
        chosen = set(pick(uncertainty(probabilities, strategy, seed + len(rounds)), step))
        labelled += [pool[i] for i in sorted(chosen)]
        pool = [index for i, index in enumerate(pool) if i not in chosen]


def labels_to_reach(rounds: list[dict], score: float) -> int | None:
    return next((r["labelled"] for r in rounds if r["test_f1_macro"] >= score), None)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--strategy", default="entropy", choices=("least_confidence", "margin", "entropy"))
    args = parser.parse_args()
    params = phrasebank_params(args.set)
    started = time.time()
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "pretrain"), "bench-al-")

    from pipeline.config import load_params
    from pipeline.models import use_all_cores
    from pipeline.paths import TaskPaths
    from pipeline.plots import label_curves_png
    from pipeline.records import load_records
    from pipeline.tasks import get_task

    use_all_cores()
    config = load_params(Path("params.yaml")).task("sentiment")
    task = get_task("sentiment", config)
    paths = TaskPaths("sentiment")
    train, val, test = (load_records(paths.split(s)) for s in ("train", "val", "test"))
    full_f1 = round(train_and_score(task, config, train, val, test)[0], 4)
    print(f"active_learning: all {len(train)} labelled -> test macro-F1 {full_f1:.4f}", flush=True)
    runs = {name: simulate(task, config, train, val, test, name, seed=7) for name in (args.strategy, "random")}

    uncertain, baseline = runs[args.strategy], runs["random"]
    later_rounds = list(zip(uncertain, baseline))[1:]  # round 0 is the same random start for both
    image = RESULTS / "active_learning.png"
    label_curves_png(
        {name: [(r["labelled"], r["test_f1_macro"]) for r in rounds] for name, rounds in runs.items()}, full_f1, image,
        "Financial PhraseBank: uncertainty vs random selection",
    )
    result = {
        "data": PHRASEBANK,
        "train_split": len(train),
        "full_data_test_f1_macro": full_f1,
        "strategy": args.strategy,
        "labels_to_reach_full_minus_1pt": {name: labels_to_reach(rounds, full_f1 - 0.01) for name, rounds in runs.items()},
        "uncertainty_beats_random_every_round": all(u["test_f1_macro"] > r["test_f1_macro"] for u, r in later_rounds),
        "rounds": runs,
        "plot": str(image.relative_to(RESULTS.parent.parent)),
        "train": params["sentiment"]["train"],
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("active_learning", args.set, result)


if __name__ == "__main__":
    main()
