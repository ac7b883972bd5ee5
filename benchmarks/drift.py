"""Drift alarms measured: how often the monitor's detectors alarm on windows of unshifted text (false
alarms) and on windows of shifted text (detections), at several window sizes.

Trains the sentiment champion on Financial PhraseBank (Sentences_50Agree) with today's defaults
(augmentation off, as every PhraseBank benchmark here), computes its reference as the monitor does
(its validation split and training vocabulary, pipeline/monitoring/reference.py), and scores, once,
its held-out test split and the texts of ../shared/data/fiqa_semeval (FiQA microblog posts and
SemEval headlines). Windows of n texts are then drawn from those scored texts (seed 0):
- `unshifted`: from the test split (a window larger than the split is drawn with replacement);
- `other_source`: from FiQA and SemEval together;
- `label_shift`: from the test split, resampled so that `--negative` of the texts are negative
  (gold label; the rest keep their neutral/positive proportions), i.e. the same source with more
  bad news.
`--windows` windows per kind and size (50, 200, 1000). Each window goes through the monitor's own
statistics (measure_drift, monitoring's defaults): the chi-square on predicted labels, the drop in
mean confidence, the rise in the unseen-word rate, and `any` (the monitor's alarm: one of them).
Per detector, kind and size: the share of windows that alarm (the false-alarm rate on `unshifted`,
the detection rate on the shifts), and the milliseconds a window takes (the texts' scoring, shared
by every detector, is timed apart, per text). The CPU model and flags are recorded beside them.
Writes benchmarks/results/drift.json and drift.png.

    python benchmarks/drift.py [--windows 200] [--negative 0.6]
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter

from common import (
    PHRASEBANK,
    RESULTS,
    SHARED_DATA,
    benchmark_parser,
    cpu_facts,
    phrasebank_params,
    run_facts,
    run_in_scratch,
    write_result,
)

SIZES = (50, 200, 1000)
KINDS = ("unshifted", "other_source", "label_shift")
TARGET = {"max_false_alarm_rate": 0.05, "min_detection_rate": 0.95, "at_size": 200}
FIQA = SHARED_DATA / "fiqa_semeval"


def other_source_texts() -> list[str]:
    """The FiQA posts and SemEval headlines (their scores unused: a detector sees no labels)."""
    posts = json.loads((FIQA / "FiQA_post.json").read_text(encoding="utf-8"))
    headlines = json.loads((FIQA / "SemEval2017Task5Headlines.json").read_text(encoding="utf-8"))
    return [post["sentence"] for post in posts.values()] + [headline["title"] for headline in headlines]


def draw(pool: list[int], n: int, rng: random.Random) -> list[int]:
    """n indices of `pool`: without replacement when it holds enough, else with."""
    return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)


def label_shifted(labels: list[str], n: int, negative: float, rng: random.Random) -> list[int]:
    """n indices with a `negative` share of gold-negative texts, the rest drawn from the others as they come."""
    negatives = [i for i, label in enumerate(labels) if label == "negative"]
    others = [i for i, label in enumerate(labels) if label != "negative"]
    count = round(n * negative)
    return draw(negatives, count, rng) + draw(others, n - count, rng)


def alarm_rates(found: list[dict]) -> dict:
    """Share of windows in which each statistic, and any of them, alarmed."""
    rates = {name: sum(window[name]["drifted"] for window in found) / len(found) for name in found[0]}
    rates["any"] = sum(any(figure["drifted"] for figure in window.values()) for window in found) / len(found)
    return {name: round(rate, 4) for name, rate in rates.items()}


def plot(table: dict, path) -> None:
    """Alarm rate per detector, kind and size: grouped bars, the targets as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    detectors = list(table["unshifted"]["200"]["alarm_rate"])
    figure, axes = plt.subplots(1, len(KINDS), figsize=(4 * len(KINDS), 3.6), sharey=True)
    for axis, kind in zip(axes, KINDS):
        width = 0.8 / len(SIZES)
        for j, size in enumerate(SIZES):
            rates = [table[kind][str(size)]["alarm_rate"][d] for d in detectors]
            axis.bar([i + j * width for i in range(len(detectors))], rates, width, label=f"n={size}")
        axis.axhline(TARGET["max_false_alarm_rate"] if kind == "unshifted" else TARGET["min_detection_rate"], color="black", lw=0.8, ls="--")
        axis.set_xticks([i + width for i in range(len(detectors))], detectors, rotation=20)
        axis.set_title(f"{kind}: {'false alarms' if kind == 'unshifted' else 'detections'}")
    axes[0].set_ylabel("share of windows that alarm")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--windows", type=int, default=200, help="windows per kind and size")
    parser.add_argument("--negative", type=float, default=0.6, help="the share of negative texts in a label-shifted window")
    args = parser.parse_args()
    started = time.time()
    params = phrasebank_params(args.set)
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment", "pretrain", "train"), "bench-drift-")

    from pipeline.models import use_all_cores
    from pipeline.monitoring.drift import measure_drift
    from pipeline.monitoring.reference import figures, vocabulary
    from pipeline.params import MonitoringConfig
    from pipeline.paths import TaskPaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params

    use_all_cores()
    task = get_task("sentiment", load_params().task("sentiment"))
    paths = TaskPaths("sentiment")
    model, tokenizer = task.load_model(str(paths.model_dir))
    train, val, test = (load_records(p) for p in (paths.augmented_train, paths.split("val"), paths.split("test")))
    ref = figures(task, val, task.predict(model, tokenizer, val), vocabulary(task, train))
    other = [{"text": text} for text in other_source_texts()]
    scoring_started = time.perf_counter()
    scored = {"test": task.predict(model, tokenizer, test), "other": task.predict(model, tokenizer, other)}
    ms_per_text = 1000 * (time.perf_counter() - scoring_started) / (len(test) + len(other))
    texts = {"test": [r["text"] for r in test], "other": [r["text"] for r in other]}
    gold = [r["label"] for r in test]

    settings, rng, table = MonitoringConfig(), random.Random(0), {}
    for kind in KINDS:
        table[kind] = {}
        source = "other" if kind == "other_source" else "test"
        for size in SIZES:
            found, seconds = [], []
            for _ in range(args.windows):
                if kind == "label_shift":
                    window = label_shifted(gold, size, args.negative, rng)
                else:
                    window = draw(list(range(len(texts[source]))), size, rng)
                window_started = time.perf_counter()
                found.append(measure_drift(ref, [texts[source][i] for i in window], [scored[source][i] for i in window],
                                           settings, "label_shift"))
                seconds.append(time.perf_counter() - window_started)
            table[kind][str(size)] = {"alarm_rate": alarm_rates(found), "ms_per_window": round(1000 * statistics.median(seconds), 2)}
            print(f"{kind:13s} n={size:4d}: {table[kind][str(size)]}", flush=True)

    at = str(TARGET["at_size"])
    result = {
        "target": TARGET,
        "table": table,
        "false_alarm_rate_at_200": table["unshifted"][at]["alarm_rate"],
        "detection_rate_at_200": {kind: table[kind][at]["alarm_rate"] for kind in KINDS[1:]},
        "windows_per_kind_and_size": args.windows,
        "label_shift_negative_share": args.negative,
        "texts": {"test": len(test), "val_reference": len(val), "other_source": len(other)},
        "test_label_shares": {label: round(count / len(gold), 4) for label, count in sorted(Counter(gold).items())},
        "reference": {"labels": ref["labels"], "mean_confidence": round(ref["mean_confidence"], 4), "oov_rate": round(ref["oov_rate"], 4)},
        "settings": {"label_shift_pvalue": settings.label_shift_pvalue, "confidence_drop": settings.confidence_drop,
                     "oov_increase": settings.oov_increase},
        "scoring_ms_per_text": round(ms_per_text, 2),
        "data": {"champion": PHRASEBANK, "other_source": "fiqa_semeval/FiQA_post.json + SemEval2017Task5Headlines.json"},
        **cpu_facts(),
        **run_facts(params, "sentiment", args.set, started),
    }
    plot(table, RESULTS / "drift.png")
    write_result("drift", args.set, result)


if __name__ == "__main__":
    main()
