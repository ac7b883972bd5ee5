"""Evidently's drift methods on the windows benchmarks/drift.py drew: the anchor its detectors are compared with.
Each window's verdict comes back with a score that grows with drift (the ROC AUC, or -log10 p).

Runs in Evidently's own venv (drift.py makes it: Evidently 0.7 pins pandas and plotly below the
project's). Each window goes through the method Evidently picks by default, as `ValueDrift` and
`EmbeddingsDrift` in a Report would, called directly so the time is the method's, not the report's:
- `evidently_text`: the text column (a domain classifier on TF-IDF, its ROC AUC against the 95th
  percentile of a random classifier's);
- `evidently_label`: the predicted label, a categorical column (chi-square, p < 0.05, up to 1000 rows);
- `evidently_embeddings`: the champion's embeddings (a domain classifier, bootstrapped under 1000
  reference rows).

    python benchmarks/drift_evidently.py FOLDER   # reads FOLDER/windows.json and embeddings.npz, writes FOLDER/evidently.json
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metrics.data_drift.embedding_drift_methods import model


def column_drift(reference: pd.Series, current: pd.Series, kind: ColumnType) -> tuple[float, bool]:
    """(score, drifted) of the stat test Evidently picks by default for a column of this kind."""
    result = get_stattest(reference, current, kind, None)(reference, current, kind, None)
    return float(result.drift_score), bool(result.drifted)


def p_value_score(pvalue: float, drifted: bool) -> tuple[float, bool]:
    """A p-value as a score that grows with drift (-log10 p), as the other methods' ROC AUC does."""
    return -math.log10(max(pvalue, 1e-300)), drifted


def embeddings_drift(reference: np.ndarray, current: np.ndarray) -> tuple[float, bool]:
    """(ROC AUC, drifted) of EmbeddingsDriftMetric's default method."""
    score, drifted, _ = model(bootstrap=len(reference) < 1000)(pd.DataFrame(current), pd.DataFrame(reference))
    return float(score), bool(drifted)


def main(folder: Path) -> None:
    spec = json.loads((folder / "windows.json").read_text())
    arrays = np.load(folder / "embeddings.npz")
    reference = spec["reference"]
    ref_text, ref_label = pd.Series(reference["text"]), pd.Series(reference["label"])
    results = []
    for number, window in enumerate(spec["windows"], 1):
        pool, indices = spec["pools"][window["pool"]], window["indices"]
        text = pd.Series([pool["text"][i] for i in indices])
        label = pd.Series([pool["label"][i] for i in indices])
        calls = {
            "evidently_text": lambda: column_drift(ref_text, text, ColumnType.Text),
            "evidently_label": lambda: p_value_score(*column_drift(ref_label, label, ColumnType.Categorical)),
            "evidently_embeddings": lambda: embeddings_drift(arrays["reference"], arrays[window["pool"]][indices]),
        }
        found = {}
        for name, call in calls.items():
            started = time.perf_counter()
            score, drifted = call()
            found[name] = {"score": score, "drifted": drifted, "seconds": time.perf_counter() - started}
        results.append(found)
        if number % 20 == 0:
            print(f"evidently: {number}/{len(spec['windows'])} windows", flush=True)
    (folder / "evidently.json").write_text(json.dumps(results))


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # pandas' and sklearn's deprecation warnings inside Evidently, once per window
    main(Path(sys.argv[1]))
