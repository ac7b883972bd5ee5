"""Promotion noise on Financial PhraseBank (Sentences_50Agree): how often the champion moves between
models of equal quality with the paired test and without it, and whether a clearly better model is
still promoted.

Equal quality: the default config (augmentation off, as in the other benchmarks) trained with
--seeds different seeds on the same random `--share` of the train split (default a quarter);
seed_differences checks on the test split that they are of equal quality. Every ordered pair of
them, as challenger and champion, goes through the register stage's own decision (register.judge) on the
validation split, with promotion.test: none and with paired_bootstrap (min_delta 0, the defaults).
Better: the same config trained on the whole train split; it must be promoted over every seed's
model (and its test score says whether it really is better). A finer estimate: for each pair of
seed models, SIMULATIONS pairs whose members take one model's prediction or the other's on each
example by a coin flip, so they are of equal quality by construction. Each pair of trained models
also records its gain on the test split: a move to a model that is not better there is a move on
noise. Also: the time the test takes for 1,000 resamples of 1,000 examples on one core, and the
noise in the scores. With --cache, trained models are kept and reused by the next run.
Writes benchmarks/results/promotion_noise.json.

    python benchmarks/promotion_noise.py [--seeds 5] [--cache DIR] [--set train.epochs=3 ...]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import statistics
import time
from pathlib import Path

from common import PHRASEBANK, benchmark_parser, cpu_facts, fine_tune, phrasebank_params, scratch_splits, write_result

TARGET = {"equal_quality_swap_rate_with_test_at_most": 0.05, "better_model_promoted_over": "every seed's model"}
SHARE = 0.25  # of the train split for the equal-quality models: equal there (measured), and the whole split clearly better
SIMULATIONS = 100  # coin-flip pairs per pair of seed models
FULL_SEED = 42  # the better model's seed: params.yaml's
SPEED_EXAMPLES, SPEED_REPEATS = 1000, 5


def train_predict(task, config, train: list, val: list, test: list, seed: int) -> dict:
    """Fine-tune with `seed` on `train`; its predicted labels on val and test, and its scores."""
    model, tokenizer, seconds = fine_tune(task, config, train, val, seed)
    labels = {split: [p["label"] for p in task.predict(model, tokenizer, examples)] for split, examples in (("val", val), ("test", test))}
    scores = {f"{split}_f1_macro": round(task.metrics(examples, as_predictions(labels[split]))["f1_macro"], 4)
              for split, examples in (("val", val), ("test", test))}
    return {"seed": seed, "train_rows": len(train), "train_seconds": round(seconds, 1), **scores, "labels": labels}


def as_predictions(labels: list[str]) -> list[dict]:
    return [{"label": label} for label in labels]


def cached_model(cache: Path | None, name: str, make) -> dict:
    """A trained model's record from the cache folder, or made now (and cached)."""
    path = cache / f"{name}.json" if cache else None
    cached = bool(path and path.exists())
    model = json.loads(path.read_text()) if cached else make()
    if path and not cached:
        path.write_text(json.dumps(model))
    print(f"promotion_noise: {name}: val macro-F1 {model['val_f1_macro']:.4f}, test {model['test_f1_macro']:.4f}, "
          f"trained in {model['train_seconds']:.0f} s" + (" (from the cache)" if cached else ""), flush=True)
    return model


def compare(task, val: list, challenger: list[str], champion: list[str], promotion) -> dict:
    """The register stage's decision on one pair of models, as a row of the result."""
    from pipeline.stages.register import judge

    verdict = judge(task, promotion, val, as_predictions(challenger), as_predictions(champion))
    row = {"delta": round(verdict.delta, 4), "promoted": verdict.promote}
    if verdict.test is not None:
        row.update(interval=[round(verdict.test.low, 4), round(verdict.test.high, 4)], p_value=round(verdict.test.p_value, 4))
    return row


def pair_rates(task, val: list, pairs: list[tuple[str, dict, dict]], tested, untested) -> dict:
    """Each (name, challenger, champion) with the test and without: how often the champion moves and,
    for trained models, how often it moves to one that is not better on the test split."""
    rows = []
    for name, challenger, champion in pairs:
        first, second = challenger["labels"]["val"], champion["labels"]["val"]
        row = {"pair": name, **compare(task, val, first, second, tested),
               "promoted_without_test": compare(task, val, first, second, untested)["promoted"]}
        if "test_f1_macro" in challenger:
            row["test_gain"] = round(challenger["test_f1_macro"] - champion["test_f1_macro"], 4)
        rows.append(row)
    moved = sum(r["promoted"] for r in rows)
    moved_without = sum(r["promoted_without_test"] for r in rows)
    summary = {"pairs": len(rows), "promoted_with_test": moved, "promoted_without_test": moved_without,
               "swap_rate_with_test": round(moved / len(rows), 4), "swap_rate_without_test": round(moved_without / len(rows), 4)}
    if all("test_gain" in r for r in rows):
        summary["moves_to_a_model_not_better_on_test"] = {
            "with_test": sum(r["promoted"] and r["test_gain"] <= 0 for r in rows),
            "without_test": sum(r["promoted_without_test"] and r["test_gain"] <= 0 for r in rows)}
    return {**summary, "comparisons": rows}


def coin_flip_pairs(seed_models: dict[str, dict]) -> list[tuple[str, dict, dict]]:
    """SIMULATIONS pairs per pair of seed models, each example's two predictions shared out at random."""
    pairs = []
    for (a, first), (b, second) in itertools.combinations(seed_models.items(), 2):
        for k in range(SIMULATIONS):
            rng = random.Random(k)
            flips = [rng.random() < 0.5 for _ in first["labels"]["val"]]
            shares = zip(first["labels"]["val"], second["labels"]["val"], flips)
            mixed = [(x, y) if f else (y, x) for x, y, f in shares]
            pairs.append((f"{a}~{b}#{k}", {"labels": {"val": [x for x, _ in mixed]}}, {"labels": {"val": [y for _, y in mixed]}}))
    return pairs


def noise(task, examples: dict[str, list], seed_models: dict[str, dict], promotion) -> dict:
    """Standard deviations, in macro-F1 points: of one model's score over resamples of a split, of
    the paired gain over resamples of val, and of the score from seed to seed."""
    from pipeline.significance import bootstrap_gains, resample_counts

    def one_model(split: str, model: dict) -> float:
        stats = task.metric_statistics(examples[split], as_predictions(model["labels"][split]))
        counts = resample_counts(len(stats), promotion.resamples, promotion.seed)
        return float(task.metric_from_statistics(counts @ stats).std())

    def paired(a: dict, b: dict) -> float:
        s_a, s_b = (task.metric_statistics(examples["val"], as_predictions(m["labels"]["val"])) for m in (a, b))
        return float(bootstrap_gains(s_a, s_b, task.metric_from_statistics, promotion.resamples, promotion.seed).std())

    def points(values: list[float]) -> float:
        return round(100 * statistics.mean(values), 2)

    return {
        "bootstrap_sd_val_f1_points": points([one_model("val", m) for m in seed_models.values()]),
        "bootstrap_sd_test_f1_points": points([one_model("test", m) for m in seed_models.values()]),
        "paired_gain_sd_val_f1_points": points([paired(a, b) for a, b in itertools.combinations(seed_models.values(), 2)]),
        "seed_sd_val_f1_points": round(100 * statistics.stdev(m["val_f1_macro"] for m in seed_models.values()), 2),
        "seed_sd_test_f1_points": round(100 * statistics.stdev(m["test_f1_macro"] for m in seed_models.values()), 2),
    }


def seed_differences(seed_models: dict[str, dict]) -> dict:
    """Whether models that differ only in seed are of equal quality. Over every pair, the gain on val
    and the gain on test measure the same true difference with independent noise, so their
    covariance estimates its variance: a standard deviation near 0 means equal quality."""
    pairs = list(itertools.combinations(seed_models.values(), 2))
    val = [a["val_f1_macro"] - b["val_f1_macro"] for a, b in pairs]
    test = [a["test_f1_macro"] - b["test_f1_macro"] for a, b in pairs]
    covariance = statistics.covariance(val, test)
    try:
        correlation = round(statistics.correlation(val, test), 2)
    except statistics.StatisticsError:  # every gain the same on one split (e.g. models that all predict one label)
        correlation = None
    return {"pairs": len(pairs), "val_test_gain_correlation": correlation,
            "true_difference_sd_f1_points": round(100 * max(covariance, 0.0) ** 0.5, 2)}


def test_speed(task, examples: list, first: list[str], second: list[str], promotion) -> dict:
    """Seconds for the register stage's decision (statistics, 1,000 resamples, interval) on one core."""
    from threadpoolctl import threadpool_limits

    from pipeline.stages.register import judge

    times = []
    with threadpool_limits(1):
        for _ in range(SPEED_REPEATS):
            started = time.perf_counter()
            judge(task, promotion, examples, as_predictions(first), as_predictions(second))
            times.append(time.perf_counter() - started)
    return {"examples": len(examples), "resamples": promotion.resamples, "seconds_median": round(statistics.median(times), 3),
            "repeats": SPEED_REPEATS, "numpy_threads": 1, **cpu_facts()}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="models of equal quality (seeds 1..N)")
    parser.add_argument("--share", type=float, default=SHARE, help="of the train split, for the equal-quality models")
    parser.add_argument("--cache", type=Path, help="keep each trained model's predictions here, and reuse them")
    args = parser.parse_args()
    if args.seeds < 3:
        parser.error(f"--seeds {args.seeds}: give at least 3, so that seed models can be compared pair with pair")
    if not 0 < args.share < 1:
        parser.error(f"--share {args.share}: give a share of the train split between 0 and 1, e.g. 0.25")
    params = phrasebank_params(args.set)
    started = time.time()
    task, config, train, val, test = scratch_splits(params, "sentiment", "bench-noise-")
    part = [train[i] for i in sorted(random.Random(0).sample(range(len(train)), round(len(train) * args.share)))]
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    cache_names = {f"seed{s}": f"seed{s}-share{args.share}" for s in range(1, args.seeds + 1)}
    from_cache = sorted(name for name in (*cache_names.values(), "full") if args.cache and (args.cache / f"{name}.json").exists())
    seed_models = {f"seed{s}": cached_model(args.cache, cache_names[f"seed{s}"], lambda s=s: train_predict(task, config, part, val, test, s))
                   for s in range(1, args.seeds + 1)}
    full = cached_model(args.cache, "full", lambda: train_predict(task, config, train, val, test, FULL_SEED))

    tested = dataclasses.replace(config.promotion, min_delta=0.0, test="paired_bootstrap")
    untested = dataclasses.replace(tested, test="none")
    ordered = itertools.permutations(seed_models.items(), 2)
    equal = pair_rates(task, val, [(f"{a} over {b}", first, second) for (a, first), (b, second) in ordered], tested, untested)
    simulated = pair_rates(task, val, coin_flip_pairs(seed_models), tested, untested)
    simulated.pop("comparisons")  # thousands of rows: the rates say it
    better = pair_rates(task, val, [(f"full over {b}", full, model) for b, model in seed_models.items()], tested, untested)
    worse = pair_rates(task, val, [(f"{b} over full", model, full) for b, model in seed_models.items()], tested, untested)
    both = {"val": val, "test": test}
    speed_examples = (val + test)[:SPEED_EXAMPLES]
    speed_labels = [(m["labels"]["val"] + m["labels"]["test"])[:SPEED_EXAMPLES] for m in list(seed_models.values())[:2]]

    result = {
        "data": PHRASEBANK,
        "split_sizes": {"train": len(train), "equal_quality_train": len(part), "share": args.share, "val": len(val), "test": len(test)},
        "promotion": dataclasses.asdict(tested),
        "equal_quality": equal,
        "coin_flip_equal_quality": simulated,
        "better": {**better, "full_test_f1_macro": full["test_f1_macro"], "full_val_f1_macro": full["val_f1_macro"],
                   "better_on_test_than_every_seed": all(full["test_f1_macro"] > m["test_f1_macro"] for m in seed_models.values())},
        "seed_over_better": worse,
        "noise": noise(task, both, seed_models, tested),
        "seed_differences": seed_differences(seed_models),
        "speed": test_speed(task, speed_examples, *speed_labels, tested),
        "models": {name: {k: v for k, v in m.items() if k != "labels"} for name, m in {**seed_models, "full": full}.items()},
        "models_from_cache": from_cache,  # trained by an earlier run (their train_seconds are from then)
        "train": params["sentiment"]["train"],
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("promotion_noise", args.set + ([] if args.share == SHARE else [f"share={args.share}"]), result)


if __name__ == "__main__":
    main()
