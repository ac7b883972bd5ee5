"""Active learning on Financial PhraseBank (Sentences_50Agree): uncertainty vs random selection.

A simulated loop on the pipeline's train split: start with 10% of it labelled (the same random
10% for both strategies), train, score the rest (the pool) with the model, "label" the k texts
the strategy picks (their gold labels are revealed), and train again from the pretrained model,
until half the split is labelled. A small labelled set trains more epochs, up to the optimiser
steps of the full-data run (at most MAX_EPOCHS), since a fixed epoch count leaves it undertrained.
Every model is scored on the test split; a model trained on the whole split is the reference.
Writes benchmarks/results/active_learning.json and .png (active_learning-STRATEGY.* for
another strategy than entropy, ...-diversityD.* with a diversity term, ...-stepS.* for rounds
of another share than 20% (STEP).

    python benchmarks/active_learning.py [--strategy entropy] [--diversity 0.5] [--step 0.1] [--set train.epochs=5 ...]
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
import time
from pathlib import Path

from common import PHRASEBANK, RESULTS, benchmark_parser, phrasebank_params, scratch_splits, write_result

TARGET = {"uncertainty_labels_to_reach_full_minus_1pt_at_most": 0.5, "uncertainty_beats_random": "every round"}
START, END = 0.10, 0.50  # shares of the train split labelled at the first and the last round
STEP = 0.20  # share added per round by default (--step)
MAX_EPOCHS = 12


def round_shares(step: float) -> list[float]:
    """Shares of the train split labelled at each round: START, START + step, ..., END."""
    return [round(START + i * step, 4) for i in range(round((END - START) / step) + 1)]


def epochs_for(config, labelled: int, full: int) -> float:
    """Epochs giving `labelled` texts the full-data run's optimiser steps, capped at MAX_EPOCHS."""
    return min(MAX_EPOCHS, math.ceil(config.train.epochs * full / labelled))


def train_and_score(task, config, labelled: list, val: list, test: list, epochs: float) -> tuple[float, object, object]:
    """Fine-tune from the pretrained model on `labelled` for `epochs`; (test macro-F1, model, tokenizer)."""
    from pipeline.paths import PipelinePaths
    from pipeline.stages.train import base_model_path, build_trainer

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    with tempfile.TemporaryDirectory(prefix="al-") as output:
        trainer, tokenizer = build_trainer(task, config, labelled, val, Path(output), base_model_path(task, PipelinePaths(task.pipeline)))
        trainer.train()
    model = trainer.model
    return task.metrics(test, task.predict(model, tokenizer, test))["f1_macro"], model, tokenizer


def train_round(task, config, train: list, labelled: list[int], val: list, test: list, name: str) -> tuple[dict, object, object]:
    """Train on the labelled indices; the round's record (labelled, epochs, test macro-F1, seconds), model, tokenizer."""
    started, epochs = time.time(), epochs_for(config, len(labelled), len(train))
    f1, model, tokenizer = train_and_score(task, config, [train[i] for i in labelled], val, test, epochs)
    print(f"active_learning[{name}]: {len(labelled)} labelled, {epochs} epochs -> test macro-F1 {f1:.4f}", flush=True)
    record = {"labelled": len(labelled), "epochs": epochs, "test_f1_macro": round(f1, 4), "seconds": round(time.time() - started, 1)}
    return record, model, tokenizer


def simulate(task, config, train: list, val: list, test: list, start: tuple, shares: list[float], strategy: str,
             seed: int, diversity: float = 0.0) -> list[dict]:
    """One active-learning run from the shared first round; a record per round."""
    from pipeline.techniques.active_learning import pick, uncertainty

    labelled, pool, (record, model, tokenizer) = start[0][:], start[1][:], start[2]
    rounds = [record]
    for share in shares[1:]:
        probabilities, embeddings = task.class_probabilities(model, tokenizer, [train[i] for i in pool])
        scores = uncertainty(probabilities, strategy, seed + len(rounds))
        chosen = set(pick(scores, round(share * len(train)) - len(labelled), embeddings, diversity))
        labelled += [pool[i] for i in sorted(chosen)]
        pool = [index for i, index in enumerate(pool) if i not in chosen]
        record, model, tokenizer = train_round(task, config, train, labelled, val, test, strategy)
        rounds.append(record)
    return rounds


def labels_to_reach(rounds: list[dict], score: float) -> int | None:
    return next((r["labelled"] for r in rounds if r["test_f1_macro"] >= score), None)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--strategy", default="entropy", choices=("least_confidence", "margin", "entropy"))
    parser.add_argument("--diversity", type=float, default=0.0, help="as active_learning.diversity: > 0 skips texts like ones picked")
    parser.add_argument("--step", type=float, default=STEP, help="share of the train split added per round")
    args = parser.parse_args()
    shares = round_shares(args.step)
    params = phrasebank_params(args.set)
    started = time.time()
    task, config, train, val, test = scratch_splits(params, "sentiment", "bench-al-")
    from pipeline.plots import label_curves_png

    full_f1 = round(train_and_score(task, config, train, val, test, config.train.epochs)[0], 4)
    print(f"active_learning: all {len(train)} labelled -> test macro-F1 {full_f1:.4f}", flush=True)
    order = list(range(len(train)))
    random.Random(7).shuffle(order)
    first = round(START * len(train))
    start = (order[:first], order[first:], train_round(task, config, train, order[:first], val, test, "start"))
    runs = {args.strategy: simulate(task, config, train, val, test, start, shares, args.strategy, seed=7,
                                    diversity=args.diversity),
            "random": simulate(task, config, train, val, test, start, shares, "random", seed=7)}

    uncertain, baseline = runs[args.strategy], runs["random"]
    later_rounds = list(zip(uncertain, baseline))[1:]  # round 0 is the same random start for both
    result_name = ("active_learning" + ("" if args.strategy == "entropy" else f"-{args.strategy}")
                   + (f"-diversity{args.diversity:g}" if args.diversity else "")
                   + ("" if args.step == STEP else f"-step{args.step:g}"))
    image = RESULTS / f"{result_name}.png"
    label_curves_png(
        {name: [(r["labelled"], r["test_f1_macro"]) for r in rounds] for name, rounds in runs.items()}, full_f1, image,
        "Financial PhraseBank: uncertainty vs random selection",
    )
    result = {
        "data": PHRASEBANK,
        "train_split": len(train),
        "full_data_test_f1_macro": full_f1,
        "strategy": args.strategy,
        "diversity": args.diversity,
        "round_shares": shares,
        "labels_to_reach_full_minus_1pt": {name: labels_to_reach(rounds, full_f1 - 0.01) for name, rounds in runs.items()},
        "uncertainty_beats_random_every_round": all(u["test_f1_macro"] > r["test_f1_macro"] for u, r in later_rounds),
        "rounds": runs,
        "plot": str(image.relative_to(RESULTS.parent.parent)),
        "train": params["sentiment"]["train"],
        "max_epochs": MAX_EPOCHS,
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result(result_name, args.set, result)


if __name__ == "__main__":
    main()
