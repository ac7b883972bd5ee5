"""Drift alarms measured: how often each detector alarms on windows of unshifted text (false alarms) and
on windows of shifted text (detections), at several window sizes, beside Evidently on the same windows.

Trains the sentiment champion on Financial PhraseBank (Sentences_50Agree) with today's defaults
(augmentation off, as every PhraseBank benchmark here), takes its reference as the monitor does (its
validation split and training vocabulary, pipeline/monitoring/reference.py), and scores, once, its
held-out test split and the texts of ../shared/data/fiqa_semeval (FiQA microblog posts and SemEval
headlines): probabilities and the [CLS] embedding its head reads. Windows of n texts (seed 0; a window
larger than its pool is drawn with replacement), `--windows` per kind and size (50, 200, 1000):
- `unshifted`: from the test split;
- `clear_sentences`: test sentences every annotator agreed on (in Sentences_AllAgree): the same
  source, an easier sample; reported, no target (an alarm here is not wrong, nor needed);
- `other_source`: from FiQA and SemEval together;
- `negative_20`, `negative_30`, `negative_60`: the test split resampled so that 20%, 30%, 60% of the
  texts are negative by their gold label (11% in the split), the rest in their own proportions.
Detectors, each timed per window (the scoring, shared by all, is timed apart, per text):
- the monitor's own (measure_drift, monitoring's defaults): `label_shift` (the predicted labels: a
  chi-square p-value and how far their shares moved), `chi_square_only` (the p-value alone at the same
  threshold: what the distance adds), `confidence` (drop in mean confidence), `oov_rate` (rise in unseen words),
  `monitor_alarm` (its alarm: a figure of monitoring.alarm drifted);
- the "Failing Loudly" anchors (Rabanser et al., 2019), alarm at p < 0.05: `class_probabilities` (BBSD,
  a KS test per class on the predicted probabilities, Bonferroni) and `embeddings_mmd` (MMD on the
  champion's embeddings, permutation test);
- Evidently 0.7's default methods (benchmarks/drift_evidently.py, in its own venv) on the text, the
  predicted label and the embeddings, on the first `--evidently-windows` windows of each kind at n=200
  (its text method takes about two seconds a window).
Per detector, kind and size: the share of windows that alarm and the milliseconds a window takes; on
the windows Evidently saw, every detector's rate; and, from each detector's score, its detection rate
at the threshold that keeps false alarms at 5% (its best use, whatever its default threshold); and
the label figure's alarm rates under other thresholds (`label_rule_sweep`), to set its defaults.
The CPU model and flags are recorded beside them. Writes benchmarks/results/drift.json, drift.png
(detection against false alarms at n=200) and drift-sizes.png (alarm rates against window size).

    python benchmarks/drift.py [--windows 200] [--evidently-windows 100]
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import (
    PHRASEBANK,
    RESULTS,
    ROOT,
    SHARED_DATA,
    benchmark_parser,
    cpu_facts,
    phrasebank_params,
    run_facts,
    run_in_scratch,
    write_result,
)

SIZES = (50, 200, 1000)
QUIET, BENIGN = "unshifted", "clear_sentences"
SHIFTS = ("other_source", "negative_20", "negative_30", "negative_60")
KINDS = (QUIET, BENIGN, *SHIFTS)
TARGET = {"max_false_alarm_rate": 0.05, "min_detection_rate": 0.95, "at_size": 200}
ALPHA = 0.05  # the anchors' significance level, as in Failing Loudly
PERMUTATIONS = 200  # per MMD test
SWEEP_PVALUES, SWEEP_DISTANCES = (0.01, 0.05), (0.0, 0.05, 0.075, 0.1, 0.15)  # the label rule's thresholds tried
FIQA = SHARED_DATA / "fiqa_semeval"
EVIDENTLY = ["evidently==0.7.23", "pandas<3"]  # 0.7 imports a pandas helper that pandas 3 removed
EVIDENTLY_VENV = ROOT / "benchmarks" / ".evidently-venv"


def other_source_texts() -> list[str]:
    """The FiQA posts and SemEval headlines (their scores unused: a detector sees no labels)."""
    posts = json.loads((FIQA / "FiQA_post.json").read_text(encoding="utf-8"))
    headlines = json.loads((FIQA / "SemEval2017Task5Headlines.json").read_text(encoding="utf-8"))
    return [post["sentence"] for post in posts.values()] + [headline["title"] for headline in headlines]


def all_agree_sentences() -> set[str]:
    """The sentences of Sentences_AllAgree, normalised as the pipeline stores them."""
    from pipeline.tasks.base import normalise_text

    lines = (SHARED_DATA / "financial_phrasebank" / "Sentences_AllAgree.txt").read_text(encoding="latin-1").splitlines()
    return {normalise_text(line.rsplit("@", 1)[0]) for line in lines if "@" in line}


def draw(pool: list[int], n: int, rng: random.Random) -> list[int]:
    """n indices of `pool`: without replacement when it holds enough, else with."""
    return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)


def label_shifted(labels: list[str], n: int, negative: float, rng: random.Random) -> list[int]:
    """n indices with a `negative` share of gold-negative texts, the rest drawn from the others as they come."""
    negatives = [i for i, label in enumerate(labels) if label == "negative"]
    others = [i for i, label in enumerate(labels) if label != "negative"]
    count = round(n * negative)
    return draw(negatives, count, rng) + draw(others, n - count, rng)


def draw_window(kind: str, size: int, test: list[dict], clear: list[int], other: int, rng: random.Random) -> tuple[str, list[int]]:
    """(pool, indices) of one window of `kind`."""
    if kind == "other_source":
        return "other", draw(list(range(other)), size, rng)
    if kind.startswith("negative_"):
        return "test", label_shifted([r["label"] for r in test], size, int(kind.split("_")[1]) / 100, rng)
    return "test", draw(clear if kind == BENIGN else list(range(len(test))), size, rng)


def scored(task, model, tokenizer, records: list[dict]) -> dict:
    """Texts, predictions (and what the monitor reads in them), probabilities and embeddings of `records` under the champion."""
    from pipeline.monitoring.drift import observations

    probabilities, embeddings = task.class_probabilities(model, tokenizer, records)
    names = model.config.id2label
    predictions = [{"label": names[int(row.argmax())], "score": float(row.max())} for row in probabilities]
    return {"text": [r["text"] for r in records], "predictions": predictions, "observations": observations(task, predictions),
            "probabilities": probabilities, "embeddings": embeddings}


def detect(ref: dict, pool: dict, indices: list[int], settings) -> dict:
    """Every project-side detector on one window: {name: {"score" (higher: more drift), "drifted", "seconds"}}."""
    from pipeline.monitoring.drift import class_probability_shift, embedding_shift, fired, measure_drift

    started = time.perf_counter()
    monitor = measure_drift(ref, [pool["text"][i] for i in indices], [pool["observations"][i] for i in indices], settings, "label_shift")
    seconds = time.perf_counter() - started
    label = monitor["label_shift"]
    found = {
        "label_shift": {"score": label["distance"], "drifted": label["drifted"], "pvalue": label["pvalue"], "distance": label["distance"]},
        "chi_square_only": {"score": -math.log10(max(label["pvalue"], 1e-300)), "drifted": label["pvalue"] < settings.label_shift_pvalue},
        "confidence": {"score": monitor["confidence"]["drop"], "drifted": monitor["confidence"]["drifted"]},
        "oov_rate": {"score": monitor["oov_rate"]["increase"], "drifted": monitor["oov_rate"]["drifted"]},
        "monitor_alarm": {"score": None, "drifted": bool(fired(monitor, settings))},
    }
    for figure in found.values():
        figure["seconds"] = seconds  # one call measures them all
    started = time.perf_counter()
    _, pvalue = class_probability_shift(ref["probabilities"], pool["probabilities"][indices])
    found["class_probabilities"] = {"score": -math.log10(max(pvalue, 1e-300)), "drifted": pvalue < ALPHA,
                                    "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    mmd, pvalue = embedding_shift(ref["embeddings"], pool["embeddings"][indices], PERMUTATIONS)
    found["embeddings_mmd"] = {"score": mmd, "drifted": pvalue < ALPHA, "seconds": time.perf_counter() - started}
    return found


def label_rule_sweep(found: dict) -> dict:
    """The label figure's alarm rate per kind and size under other p-value and distance thresholds (the
    monitoring keys label_shift_pvalue and label_shift_distance), from each window's p-value and distance."""

    def rate(windows: list[dict], pvalue: float, distance: float) -> float:
        return round(statistics.mean(w["label_shift"]["pvalue"] < pvalue and w["label_shift"]["distance"] >= distance
                                     for w in windows), 4)

    return {f"p<{pvalue} moved>={distance}": {kind: {str(size): rate(found[kind, size], pvalue, distance) for size in SIZES}
                                              for kind in KINDS}
            for pvalue in SWEEP_PVALUES for distance in SWEEP_DISTANCES}


def evidently_python() -> Path:
    """Evidently's own venv beside the benchmarks, made on first use (about a minute)."""
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        print(f"making {EVIDENTLY_VENV} with {' '.join(EVIDENTLY)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(EVIDENTLY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *EVIDENTLY], check=True)
    return python


def run_evidently(ref: dict, pools: dict, windows: list[tuple[str, list[int]]]) -> list[dict]:
    """Evidently's verdicts on `windows`, one dict per window, from its own venv."""
    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix="bench-drift-evidently-"))
    plain = {name: {"text": pool["text"], "label": [p["label"] for p in pool["predictions"]]} for name, pool in pools.items()}
    spec = {"reference": {"text": ref["text"], "label": [p["label"] for p in ref["predictions"]]}, "pools": plain,
            "windows": [{"pool": pool, "indices": indices} for pool, indices in windows]}
    (folder / "windows.json").write_text(json.dumps(spec))
    np.savez(folder / "embeddings.npz", reference=ref["embeddings"], **{name: pool["embeddings"] for name, pool in pools.items()})
    subprocess.run([str(evidently_python()), str(ROOT / "benchmarks" / "drift_evidently.py"), str(folder)], check=True)
    return json.loads((folder / "evidently.json").read_text())


def alarm_rates(found: list[dict]) -> dict:
    """Share of the windows in which each detector alarmed."""
    return {name: round(sum(window[name]["drifted"] for window in found) / len(found), 4) for name in found[0]}


def detection_at_false_alarms(quiet: list[dict], shifted: list[dict], rate: float) -> dict:
    """Per scored detector: the share of shifted windows above the threshold that `rate` of the quiet ones exceed."""
    found = {}
    for name in quiet[0]:
        if quiet[0][name]["score"] is None:
            continue
        quiet_scores = sorted(window[name]["score"] for window in quiet)
        threshold = quiet_scores[min(len(quiet_scores) - 1, math.ceil((1 - rate) * len(quiet_scores)) - 1)]
        found[name] = round(sum(window[name]["score"] > threshold for window in shifted) / len(shifted), 4)
    return found


def curve(quiet: list[float], shifted: list[float]) -> tuple[list[float], list[float]]:
    """(false-alarm rates, detection rates) as the threshold on a score sweeps from high to low."""
    thresholds = sorted(set(quiet) | set(shifted), reverse=True)
    return ([sum(q > t for q in quiet) / len(quiet) for t in thresholds] + [1.0],
            [sum(s > t for s in shifted) / len(shifted) for t in thresholds] + [1.0])


def panels() -> tuple:
    """(pyplot, figure, six axes in two rows) for one panel per window kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(12, 7.5), sharey=True)
    return plt, figure, list(axes.flat)


def plot_tradeoff(windows: dict, rates: dict, path: Path) -> None:
    """Per shift kind at n=200: each detector's detection against its false alarms as its threshold moves
    (the curve), and at its default threshold (the dot)."""
    plt, figure, axes = panels()
    for axis, kind in zip(axes, (BENIGN, *SHIFTS)):
        quiet, shifted = windows[QUIET], windows[kind]
        for number, name in enumerate(quiet[0]):
            color = f"C{number}"
            if quiet[0][name]["score"] is not None:
                axis.plot(*curve([w[name]["score"] for w in quiet], [w[name]["score"] for w in shifted]), color=color, lw=1)
            axis.plot(rates[QUIET][name], rates[kind][name], "o", color=color, ms=4, label=name)
        axis.axvline(TARGET["max_false_alarm_rate"], color="black", lw=0.6, ls="--")
        axis.axhline(TARGET["min_detection_rate"], color="black", lw=0.6, ls="--")
        axis.set_xscale("symlog", linthresh=0.01)
        axis.set_xlim(0, 1)
        axis.set_title(kind, fontsize=10)
        axis.set_xlabel("false alarms (unshifted windows)")
        axis.set_ylabel("windows that alarm (n=200)")
    axes[-1].legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center", title="dot: default threshold")
    axes[-1].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sizes(table: dict, path: Path) -> None:
    """Alarm rate against window size, per kind and detector."""
    plt, figure, axes = panels()
    for axis, kind in zip(axes, KINDS):
        for name in table[kind][str(SIZES[0])]["alarm_rate"]:
            axis.plot(SIZES, [table[kind][str(size)]["alarm_rate"][name] for size in SIZES], marker="o", ms=3, lw=1, label=name)
        axis.axhline(TARGET["max_false_alarm_rate"] if kind == QUIET else TARGET["min_detection_rate"], color="black", lw=0.6, ls="--")
        axis.set_xscale("log")
        axis.set_xticks(SIZES, [str(size) for size in SIZES])
        axis.set_title(kind, fontsize=10)
        axis.set_xlabel("texts per window")
        axis.set_ylabel("share of windows that alarm")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--windows", type=int, default=200, help="windows per kind and size")
    parser.add_argument("--evidently-windows", type=int, default=100, help="windows per kind at n=200 that Evidently also sees")
    args = parser.parse_args()
    started = time.time()
    params = phrasebank_params(args.set)
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment", "pretrain", "train"), "bench-drift-")

    from pipeline.models import use_all_cores
    from pipeline.monitoring.reference import figures, vocabulary
    from pipeline.params import MonitoringConfig
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params
    from pipeline.tasks.base import normalise_text

    use_all_cores()
    task = get_task("sentiment", load_params().pipeline("sentiment"))
    paths = PipelinePaths("sentiment")
    model, tokenizer = task.load_model(str(paths.model_dir))
    train, val, test = (load_records(p) for p in (paths.augmented_train, paths.split("val"), paths.split("test")))
    other = [{"text": text} for text in other_source_texts()]
    scoring_started = time.perf_counter()
    pools = {"test": scored(task, model, tokenizer, test), "other": scored(task, model, tokenizer, other)}
    ms_per_text = 1000 * (time.perf_counter() - scoring_started) / (len(test) + len(other))
    ref = scored(task, model, tokenizer, val)
    ref.update(figures(task, val, ref["observations"], vocabulary(task, train)))
    agreed = all_agree_sentences()
    clear = [i for i, record in enumerate(test) if normalise_text(record["text"]) in agreed]

    settings, rng, table, found, drawn = MonitoringConfig(), random.Random(0), {}, {}, {}
    for kind in KINDS:
        table[kind] = {}
        for size in SIZES:
            drawn[kind, size] = [draw_window(kind, size, test, clear, len(other), rng) for _ in range(args.windows)]
            found[kind, size] = [detect(ref, pools[pool], indices, settings) for pool, indices in drawn[kind, size]]
            table[kind][str(size)] = {"alarm_rate": alarm_rates(found[kind, size]), "ms_per_window": {
                name: round(1000 * statistics.median(w[name]["seconds"] for w in found[kind, size]), 2) for name in found[kind, size][0]}}
            print(f"{kind:15s} n={size:4d}: {table[kind][str(size)]['alarm_rate']}", flush=True)

    at, seen = TARGET["at_size"], args.evidently_windows
    verdicts = run_evidently(ref, pools, [window for kind in KINDS for window in drawn[kind, at][:seen]])
    windows = {kind: found[kind, at][:seen] for kind in KINDS}  # the windows every detector saw
    for number, kind in enumerate(KINDS):
        for window, evidently in zip(windows[kind], verdicts[number * seen:(number + 1) * seen]):
            window.update(evidently)
    same_windows = {kind: alarm_rates(windows[kind]) for kind in KINDS}
    evidently_ms = {name: round(1000 * statistics.median(v[name]["seconds"] for v in verdicts), 2) for name in verdicts[0]}
    for kind in KINDS:
        print(f"same windows  {kind:15s}: {same_windows[kind]}", flush=True)
    best_use = {kind: detection_at_false_alarms(windows[QUIET], windows[kind], TARGET["max_false_alarm_rate"])
                for kind in (BENIGN, *SHIFTS)}

    result = {
        "target": TARGET,
        "table": table,
        "false_alarm_rate_at_200": table[QUIET][str(at)]["alarm_rate"],
        "detection_rate_at_200": {kind: table[kind][str(at)]["alarm_rate"] for kind in SHIFTS},
        "same_windows_as_evidently_at_200": {"windows_per_kind": seen, "alarm_rate": same_windows, "evidently_ms_per_window": evidently_ms},
        "detection_at_5pct_false_alarms_at_200": best_use,
        "windows_per_kind_and_size": args.windows,
        "texts": {"test": len(test), "clear_sentences": len(clear), "val_reference": len(val), "other_source": len(other)},
        "test_label_shares": {label: round(count / len(test), 4) for label, count in sorted(Counter(r["label"] for r in test).items())},
        "reference": {"labels": ref["labels"], "mean_confidence": round(ref["mean_confidence"], 4), "oov_rate": round(ref["oov_rate"], 4)},
        "label_rule_sweep": label_rule_sweep(found),
        "settings": {"monitor": {key: getattr(settings, key) for key in ("alarm", "label_shift_pvalue", "label_shift_distance",
                                                                          "confidence_drop", "oov_increase")},
                     "anchors": {"alpha": ALPHA, "mmd_permutations": PERMUTATIONS}, "evidently": EVIDENTLY},
        "scoring_ms_per_text": round(ms_per_text, 2),
        "data": {"champion": PHRASEBANK, "other_source": "fiqa_semeval/FiQA_post.json + SemEval2017Task5Headlines.json",
                 "clear_sentences": "test sentences in financial_phrasebank/Sentences_AllAgree.txt"},
        **cpu_facts(),
        **run_facts(params, "sentiment", args.set, started),
    }
    plot_tradeoff(windows, same_windows, RESULTS / "drift.png")
    plot_sizes(table, RESULTS / "drift-sizes.png")
    write_result("drift", args.set, result)


if __name__ == "__main__":
    main()
