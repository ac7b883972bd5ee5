"""The paired bootstrap: is the challenger better than the champion on the same validation examples,
or only on this sample of them?

Each task turns one example's prediction into a row of sufficient statistics whose sum over any
set of examples gives the task's metric on that set (a confusion-matrix cell for macro-F1, entity
counts for entity F1, n-gram counts for BLEU). A resample of the N examples (drawn with
replacement) is then a row of counts W, and its statistics are W @ S: a thousand resamples of both
models are two matrix products, with no model run again (Koehn 2004; Berg-Kirkpatrick et al. 2012).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Metric = Callable[[np.ndarray], np.ndarray]  # summed statistics [rows, columns] -> the metric of each row


@dataclass(frozen=True)
class PairedTest:
    """The bootstrap distribution of the gain (challenger minus champion), summarised."""

    low: float  # the percentile interval of the gain at `confidence`
    high: float
    p_value: float  # share of resamples where the gain is not above min_delta (one-sided)
    confidence: float
    resamples: int
    seed: int
    examples: int

    def as_dict(self) -> dict:
        return {"method": "paired_bootstrap", "confidence": self.confidence, "resamples": self.resamples, "seed": self.seed,
                "examples": self.examples, "interval": [self.low, self.high], "p_value": self.p_value}


def f1(correct: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray) -> np.ndarray:
    """F1 from counts, element-wise; 0 where there is nothing to find and nothing found (sklearn and
    seqeval with zero_division=0)."""
    denominator = 2 * correct + false_positives + false_negatives
    return np.divide(2 * correct, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0)


def resample_counts(examples: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, examples]: how often each example is drawn in each resample of the same size."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(examples, np.full(examples, 1 / examples), size=resamples).astype(float)


def bootstrap_gains(challenger: np.ndarray, champion: np.ndarray, metric: Metric, resamples: int, seed: int) -> np.ndarray:
    """The gain in `metric` (challenger minus champion) on each of `resamples` resamples of the
    examples, the same draw for both models. `challenger` and `champion` are per-example statistics
    [examples, columns], row i of both from example i."""
    if challenger.shape != champion.shape:
        raise ValueError(f"the models were scored on different examples: statistics {challenger.shape} vs {champion.shape}")
    counts = resample_counts(len(challenger), resamples, seed)
    return metric(counts @ challenger) - metric(counts @ champion)


def paired_bootstrap(challenger: np.ndarray, champion: np.ndarray, metric: Metric, min_delta: float,
                     confidence: float, resamples: int, seed: int) -> PairedTest:
    """The percentile interval of the gain at `confidence`, and the share of resamples where the
    gain is not above min_delta."""
    gains = bootstrap_gains(challenger, champion, metric, resamples, seed)
    low, high = np.quantile(gains, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedTest(float(low), float(high), float(np.mean(gains <= min_delta)), confidence, resamples, seed, len(challenger))
