"""Drift statistics: what the champion predicts on incoming text against what it predicted on its
reference data (a chi-square on the labels or entity types counted, the drop in mean confidence,
the rise in the share of words never seen in training), each with its threshold and verdict; and the two
detectors "Failing Loudly" (Rabanser et al., 2019) found strongest, on the champion's predicted
probabilities and on its own embeddings of the text.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pipeline.params import MonitoringConfig
from pipeline.records import Record
from pipeline.tasks import Task


def observations(task: Task, predictions: list[Record]) -> list[Record]:
    """What the monitor reads in each prediction: what it counts (its label, or the type of each entity it
    found) and its confidence (Task.observation)."""
    return [task.observation(p) for p in predictions]


def count(observed: list[Record]) -> dict[str, int]:
    """How often each label (or entity type) was counted."""
    return dict(Counter(c for o in observed for c in o["counted"]))


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def oov_rate(texts: list[str], vocabulary: set[str]) -> float:
    """Share of words never seen in the training split."""
    tokens = [w for text in texts for w in words(text)]
    return sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)


def mean_score(observed: list[Record]) -> float:
    """Mean confidence: of the label, or of a sentence's word tags."""
    return sum(o["score"] for o in observed) / max(len(observed), 1)


def label_shift_pvalue(reference_counts: dict[str, int], counts: dict[str, int]) -> float:
    """Chi-square test of independence between (reference, incoming) and what was counted (label or entity type)."""
    from scipy.stats import chi2_contingency

    labels = sorted(set(reference_counts) | set(counts))
    if len(labels) < 2 or not counts or not reference_counts:
        return 1.0  # one label on both sides, or nothing counted on one (no entities): no mix to compare
    table = [[reference_counts.get(label, 0) for label in labels], [counts.get(label, 0) for label in labels]]
    return float(chi2_contingency(table).pvalue)


def label_distance(reference_counts: dict[str, int], counts: dict[str, int]) -> float:
    """How far the mix of labels (or entity types) moved: the total variation distance between the two
    sets of shares, half their summed absolute differences (0: the same mix; 0.2: a fifth of the
    predictions would have to change label to match)."""
    reference_total, total = sum(reference_counts.values()), sum(counts.values())
    if not reference_total or not total:
        return 0.0
    labels = set(reference_counts) | set(counts)
    return sum(abs(reference_counts.get(label, 0) / reference_total - counts.get(label, 0) / total) for label in labels) / 2


def class_probability_shift(reference: Any, current: Any) -> tuple[float, float]:
    """Black-box shift detection (BBSD): a Kolmogorov-Smirnov test per class on the predicted probabilities
    ([texts, classes] each); (the largest KS statistic, the smallest p-value Bonferroni-corrected for the classes)."""
    from scipy.stats import ks_2samp

    tests = [ks_2samp(reference[:, k], current[:, k]) for k in range(reference.shape[1])]
    return max(float(t.statistic) for t in tests), min(1.0, reference.shape[1] * min(float(t.pvalue) for t in tests))


def embedding_shift(reference: Any, current: Any, permutations: int = 200, seed: int = 0) -> tuple[float, float]:
    """Maximum mean discrepancy between two samples of embeddings ([texts, hidden] each), RBF kernel with the
    median heuristic for its width; (MMD², the p-value of a permutation test: the share of random splits of
    the pooled texts at least as far apart)."""
    import numpy as np

    pooled = np.vstack([reference, current]).astype(np.float64)
    norms = (pooled * pooled).sum(axis=1)
    distances = np.maximum(norms[:, None] + norms[None, :] - 2 * pooled @ pooled.T, 0)
    kernel = np.exp(-distances / np.median(distances[distances > 0]))
    # MMD² (biased) of a split is wᵀKw, w = 1/m on one side and -1/n on the other: all splits in one product
    split = np.r_[np.full(len(reference), 1 / len(reference)), np.full(len(current), -1 / len(current))]
    rng = np.random.default_rng(seed)
    splits = np.column_stack([split] + [rng.permutation(split) for _ in range(permutations)])
    mmd = ((kernel @ splits) * splits).sum(axis=0)
    return float(mmd[0]), float((1 + (mmd[1:] >= mmd[0]).sum()) / (permutations + 1))


def measure_drift(ref: dict, texts: list[str], observed: list[Record], settings: MonitoringConfig, shift: str) -> dict:
    """The three drift figures of the texts and what the monitor read in their predictions (`observations`),
    each with its threshold and verdict; `shift` names the chi-square's (Counts.shift: label_shift or
    entity_types), which drifts when its p-value is small and the mix moved far enough to matter."""
    counts = count(observed)
    pvalue, distance = label_shift_pvalue(ref["labels"], counts), label_distance(ref["labels"], counts)
    confidence = mean_score(observed)
    oov = oov_rate(texts, set(ref["vocabulary"]))
    return {
        shift: {"pvalue": pvalue, "threshold": settings.label_shift_pvalue, "distance": distance,
                "min_distance": settings.label_shift_distance, "reference": ref["labels"], "current": counts,
                "drifted": pvalue < settings.label_shift_pvalue and distance >= settings.label_shift_distance},
        "confidence": {"reference": ref["mean_confidence"], "current": confidence, "drop": ref["mean_confidence"] - confidence,
                       "threshold": settings.confidence_drop, "drifted": ref["mean_confidence"] - confidence > settings.confidence_drop},
        "oov_rate": {"reference": ref["oov_rate"], "current": oov, "increase": oov - ref["oov_rate"],
                     "threshold": settings.oov_increase, "drifted": oov - ref["oov_rate"] > settings.oov_increase},
    }


def fired(drift: dict, settings: MonitoringConfig) -> list[str]:
    """The figures that drifted and raise the alarm (monitoring.alarm, where `label_shift` names the
    chi-square of either kind); the others are only reported."""
    return [name for name, figure in drift.items()
            if figure["drifted"] and ("label_shift" if "pvalue" in figure else name) in settings.alarm]


def how_far(name: str, figure: dict) -> str:
    """One figure against its threshold, in words: what fired and by how much."""
    if "pvalue" in figure:
        return (f"{name}: p {figure['pvalue']:.2g} (threshold {figure['threshold']}), "
                f"mix moved {figure['distance']:.3f} (at least {figure['min_distance']})")
    change = "drop" if "drop" in figure else "increase"
    return f"{name}: {change} {figure[change]:.3f} (threshold {figure['threshold']})"
