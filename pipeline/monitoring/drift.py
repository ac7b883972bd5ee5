"""Drift statistics: what the champion predicts on incoming text against what it predicted on its
reference data (a chi-square on the labels or entity types counted, the drop in mean confidence,
the rise in the share of words never seen in training), each with its threshold and verdict.
"""

from __future__ import annotations

import re
from collections import Counter

from pipeline.params import MonitoringConfig
from pipeline.records import Record
from pipeline.tasks.base import Task

MONITORED = {"text-classification": "label_shift", "token-classification": "entity_types"}  # what each kind's chi-square tests


def is_tagger(task: Task) -> bool:
    """Token classification: its predictions are entities, not one label."""
    return task.pipeline_task == "token-classification"


def counted(prediction: Record) -> list[str]:
    """What the monitor counts in a prediction: its label, or the type of each entity it found."""
    return [e["type"] for e in prediction["entities"]] if "entities" in prediction else [prediction["label"]]


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def oov_rate(texts: list[str], vocabulary: set[str]) -> float:
    """Share of words never seen in the training split."""
    tokens = [w for text in texts for w in words(text)]
    return sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)


def mean_score(predictions: list[Record]) -> float:
    """Mean confidence: of the label, or of a sentence's word tags."""
    return sum(p["score"] for p in predictions) / max(len(predictions), 1)


def label_shift_pvalue(reference_counts: dict[str, int], counts: dict[str, int]) -> float:
    """Chi-square test of independence between (reference, incoming) and what was counted (label or entity type)."""
    from scipy.stats import chi2_contingency

    labels = sorted(set(reference_counts) | set(counts))
    if len(labels) < 2 or not counts or not reference_counts:
        return 1.0  # one label on both sides, or nothing counted on one (no entities): no mix to compare
    table = [[reference_counts.get(label, 0) for label in labels], [counts.get(label, 0) for label in labels]]
    return float(chi2_contingency(table).pvalue)


def measure_drift(ref: dict, texts: list[str], predictions: list[Record], settings: MonitoringConfig, shift: str) -> dict:
    """The three drift figures, each with its threshold and verdict; `shift` names the chi-square's (label_shift or entity_types)."""
    counts = dict(Counter(c for p in predictions for c in counted(p)))
    pvalue = label_shift_pvalue(ref["labels"], counts)
    confidence = mean_score(predictions)
    oov = oov_rate(texts, set(ref["vocabulary"]))
    return {
        shift: {"pvalue": pvalue, "threshold": settings.label_shift_pvalue, "reference": ref["labels"],
                "current": counts, "drifted": pvalue < settings.label_shift_pvalue},
        "confidence": {"reference": ref["mean_confidence"], "current": confidence, "drop": ref["mean_confidence"] - confidence,
                       "threshold": settings.confidence_drop, "drifted": ref["mean_confidence"] - confidence > settings.confidence_drop},
        "oov_rate": {"reference": ref["oov_rate"], "current": oov, "increase": oov - ref["oov_rate"],
                     "threshold": settings.oov_increase, "drifted": oov - ref["oov_rate"] > settings.oov_increase},
    }
