"""Monitor flow: score incoming text with the champion, store every prediction, plot a daily
sentiment index, and check for drift against the champion's reference data.

    python -m flows.monitor --input FILE   # once, on a csv with columns timestamp,text
    python -m flows.monitor                # every batch in monitoring.input not scored yet

The reference is what the champion sees on in-distribution text it was not trained on: the
validation split (examples never move between splits, so no champion trained on them). It holds
the champion's predicted-label counts and mean confidence there, the validation split's rate of
words unseen in the training split, and the training vocabulary; computed once per champion
version and cached under monitoring/reference/. On drift, an event triggers the retrain
deployment and the texts the champion is least sure about (`<task>.active_learning.strategy`) go
to data/to_label/ for labelling.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.events import DRIFT_DETECTED, emit
from pipeline import tracking
from pipeline.errors import DataError
from pipeline.models import use_all_cores
from pipeline.params import MonitoringConfig
from pipeline.paths import TaskPaths
from pipeline.plots import sentiment_index_html, sentiment_index_png
from pipeline.readers import read_file
from pipeline.records import Record, load_json, load_records, save_json
from pipeline.registry import CHAMPION, load_registered
from pipeline.tasks import get_task, load_params
from pipeline.tasks.base import Task
from pipeline.techniques.active_learning import rank, write_queue

REPORT = Path("reports/monitor.json")
PLOTS = Path("reports/monitor")
REFERENCES = Path("monitoring/reference")


def read_batch(path: Path) -> list[Record]:
    """Rows of a csv with columns timestamp,text (ISO 8601 timestamps; the date is their first 10 characters)."""
    rows = read_file(path, "csv", "utf-8")
    missing = {"timestamp", "text"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected timestamp,text)")
    return [{"timestamp": r["timestamp"], "text": r["text"], "batch": path.name} for r in rows if r["text"].strip()]


def open_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS predictions (timestamp TEXT, text TEXT, label TEXT, score REAL,"
        " model_version TEXT, batch TEXT, scored_at TEXT)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS batches (name TEXT PRIMARY KEY, scored_at TEXT)")
    return db


def new_batches(folder: Path, db: sqlite3.Connection) -> list[Path]:
    """csv batches in the input folder that no earlier run scored."""
    done = {name for (name,) in db.execute("SELECT name FROM batches")}
    return sorted(p for p in folder.glob("*.csv") if p.name not in done) if folder.is_dir() else []


def store(db: sqlite3.Connection, rows: list[Record], predictions: list[Record], version: str, batches: list[Path]) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    db.executemany(
        "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r["timestamp"], r["text"], p["label"], p["score"], version, r["batch"], now) for r, p in zip(rows, predictions)],
    )
    db.executemany("INSERT OR REPLACE INTO batches VALUES (?, ?)", [(b.name, now) for b in batches])
    db.commit()


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def oov_rate(texts: list[str], vocabulary: set[str]) -> float:
    """Share of words never seen in the training split."""
    tokens = [w for text in texts for w in words(text)]
    return sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)


def reference(task: Task, model, tokenizer, version: str) -> dict:
    """The champion's behaviour on in-distribution text (see module docstring), cached per version."""
    cache = REFERENCES / f"{task.name}-v{version}.json"
    if cache.exists():
        return load_json(cache)
    paths = TaskPaths(task.name)
    vocabulary = {w for r in load_records(paths.split("train")) for w in words(r["text"])}
    val = load_records(paths.split("val"))
    predictions = task.predict(model, tokenizer, val)
    ref = {
        "model_version": version,
        "data_hash": tracking.files_hash([paths.augmented_train, paths.split("val"), paths.split("test")]),
        "labels": dict(Counter(p["label"] for p in predictions)),
        "mean_confidence": sum(p["score"] for p in predictions) / len(predictions),
        "oov_rate": oov_rate([r["text"] for r in val], vocabulary),
        "vocabulary": sorted(vocabulary),
    }
    save_json(cache, ref)
    return ref


def label_shift_pvalue(reference_counts: dict[str, int], counts: dict[str, int]) -> float:
    """Chi-square test of independence between (reference, incoming) and predicted label."""
    from scipy.stats import chi2_contingency

    labels = sorted(set(reference_counts) | set(counts))
    if len(labels) < 2:
        return 1.0  # one label on both sides: nothing shifted
    table = [[reference_counts.get(label, 0) for label in labels], [counts.get(label, 0) for label in labels]]
    return float(chi2_contingency(table).pvalue)


def measure_drift(ref: dict, texts: list[str], predictions: list[Record], settings: MonitoringConfig) -> dict:
    """The three drift figures, each with its threshold and verdict."""
    counts = dict(Counter(p["label"] for p in predictions))
    pvalue = label_shift_pvalue(ref["labels"], counts)
    confidence = sum(p["score"] for p in predictions) / len(predictions)
    oov = oov_rate(texts, set(ref["vocabulary"]))
    return {
        "label_shift": {"pvalue": pvalue, "threshold": settings.label_shift_pvalue, "reference": ref["labels"],
                        "current": counts, "drifted": pvalue < settings.label_shift_pvalue},
        "confidence": {"reference": ref["mean_confidence"], "current": confidence, "drop": ref["mean_confidence"] - confidence,
                       "threshold": settings.confidence_drop, "drifted": ref["mean_confidence"] - confidence > settings.confidence_drop},
        "oov_rate": {"reference": ref["oov_rate"], "current": oov, "increase": oov - ref["oov_rate"],
                     "threshold": settings.oov_increase, "drifted": oov - ref["oov_rate"] > settings.oov_increase},
    }


def daily_index(db: sqlite3.Connection) -> list[dict]:
    """Share positive minus share negative among all stored predictions, per day."""
    days: dict[str, Counter] = {}
    for day, label, n in db.execute("SELECT substr(timestamp, 1, 10), label, count(*) FROM predictions GROUP BY 1, 2 ORDER BY 1"):
        days.setdefault(day, Counter())[label] = n
    return [
        {"date": day, "index": (c["positive"] - c["negative"]) / c.total(), "texts": c.total()}
        for day, c in days.items()
    ]


def summary_markdown(report: dict) -> str:
    drift = report["drift"]
    rows = "\n".join(
        f"| {name} | {figures.get('pvalue', figures.get('drop', figures.get('increase'))):.4f} | {figures['threshold']} | {figures['drifted']} |"
        for name, figures in drift.items()
    )
    index = "\n".join(f"| {d['date']} | {d['index']:+.3f} | {d['texts']} |" for d in report["index"])
    return (
        f"# Monitor: {report['model']} v{report['model_version']}\n\n"
        f"**drift detected: {report['drift_detected']}** on {report['texts']} texts\n\n"
        f"| measure | value (p-value / drop / increase) | threshold | drifted |\n|---|---|---|---|\n{rows}\n\n"
        f"## Daily sentiment index (`{PLOTS / 'index.html'}`)\n\n| date | index | texts |\n|---|---|---|\n{index}\n"
    )


@flow(name="monitor", log_prints=True)
def monitor(input: str | None = None, task: str | None = None) -> dict:
    """Score new text with the champion, store it, report the index and drift; on drift, ask for a retrain."""
    import mlflow

    logger = get_run_logger()
    params = load_params()
    settings = params.monitoring
    name = task or settings.tasks[0]
    task = get_task(name, params.task(name))
    db = open_db(Path(settings.db))
    batches = [Path(input)] if input else new_batches(Path(settings.input), db)
    rows = [row for batch in batches for row in read_batch(batch)]
    if not rows:
        logger.info("no new text in %s", input or settings.input)
        return {}

    use_all_cores()
    experiment_id = tracking.configure(params.tracking.experiment)
    name = task.config.registry.name
    version = str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    model, tokenizer = load_registered(task, f"models:/{name}/{version}")  # pinned: the alias may move meanwhile
    predictions = task.predict(model, tokenizer, rows)
    store(db, rows, predictions, version, batches)

    ref = reference(task, model, tokenizer, version)
    drift = measure_drift(ref, [r["text"] for r in rows], predictions, settings)
    index = daily_index(db)
    report = {
        "model": name, "model_version": version, "texts": len(rows), "batches": [str(b) for b in batches],
        "reference_data_hash": ref["data_hash"],
        "drift_detected": any(d["drifted"] for d in drift.values()), "drift": drift, "index": index,
    }
    days, values, counts = [d["date"] for d in index], [d["index"] for d in index], [d["texts"] for d in index]
    sentiment_index_png(days, values, PLOTS / "index.png", f"Sentiment index ({name} v{version})")
    sentiment_index_html(days, values, counts, PLOTS / "index.html", f"Sentiment index ({name} v{version})")
    if report["drift_detected"]:
        picks = task.config.active_learning  # the same ranking as `finetune select`
        queued = rank(task, model, tokenizer, [r["text"] for r in rows], picks.strategy, settings.queue_size, picks.diversity, picks.seed)
        report["labelling_queue"] = str(write_queue(queued, task.name))
    save_json(REPORT, report)

    with mlflow.start_run(experiment_id=experiment_id, run_name="monitor", tags={"monitor": "true", "model_name": name, "model_version": version}):
        mlflow.log_metrics({
            "label_shift_pvalue": drift["label_shift"]["pvalue"], "confidence_drop": drift["confidence"]["drop"],
            "oov_increase": drift["oov_rate"]["increase"], "drift_detected": float(report["drift_detected"]),
        })
        for path in (REPORT, PLOTS / "index.png", PLOTS / "index.html"):
            mlflow.log_artifact(str(path))
    create_markdown_artifact(key="monitor", markdown=summary_markdown(report), description="drift and sentiment index")

    if report["drift_detected"]:
        emit(DRIFT_DETECTED, {"model_version": version, "report": str(REPORT), "queue": report["labelling_queue"]})
        logger.warning("drift detected: retrain requested, %s texts queued in %s", settings.queue_size, report["labelling_queue"])
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Score text with the champion and check for drift.")
    parser.add_argument("--input", help="a csv with columns timestamp,text (default: new batches in monitoring.input)")
    monitor(parser.parse_args().input)
