"""The prediction store: every prediction the monitor made, with its pipeline and model version, and
the batches each pipeline has scored (SQLite, `monitoring.db`).

A pipeline's batches are csv files (`timestamp,text`) in `monitoring.input/<pipeline>/`, and, for
the first pipeline of monitoring.tasks, directly in `monitoring.input`, where they lay when only
one pipeline was monitored. A store written before pipelines were named is migrated in place.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import DataError
from pipeline.monitoring.drift import counted
from pipeline.params import MonitoringConfig
from pipeline.readers import read_file
from pipeline.records import Record


def read_batch(path: Path, name: str) -> list[Record]:
    """Rows of a csv with columns timestamp,text (ISO 8601 timestamps; the date is their first 10 characters),
    each with the name of its batch."""
    rows = read_file(path, "csv", "utf-8")
    missing = {"timestamp", "text"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected timestamp,text)")
    return [{"timestamp": r["timestamp"], "text": r["text"], "batch": name} for r in rows if r["text"].strip()]


PREDICTION_COLUMNS = "timestamp, text, label, score, model_version, batch, scored_at, pipeline"


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The column names of a table (none when it does not exist)."""
    return {column for _, column, *_ in db.execute(f"PRAGMA table_info({table})")}


def open_db(path: Path, first: str) -> sqlite3.Connection:
    """The prediction store. One from before pipelines were named is migrated in place: its rows and
    batches are given to `first`, the pipeline monitored then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("BEGIN")  # a migration happens whole or not at all
    db.execute(f"CREATE TABLE IF NOT EXISTS predictions ({PREDICTION_COLUMNS})")
    if "pipeline" not in columns(db, "predictions"):
        db.execute("ALTER TABLE predictions ADD COLUMN pipeline TEXT")
        db.execute("UPDATE predictions SET pipeline = ?", (first,))
    batch_columns = columns(db, "batches")
    old_batches = bool(batch_columns) and "pipeline" not in batch_columns  # keyed by the file name alone
    if old_batches:
        db.execute("ALTER TABLE batches RENAME TO batches_before_pipelines")
    db.execute("CREATE TABLE IF NOT EXISTS batches (pipeline TEXT, name TEXT, scored_at TEXT, PRIMARY KEY (pipeline, name))")
    if old_batches:
        db.execute("INSERT INTO batches SELECT ?, name, scored_at FROM batches_before_pipelines", (first,))
        db.execute("DROP TABLE batches_before_pipelines")
    db.commit()
    return db


def batch_folders(settings: MonitoringConfig, pipeline: str) -> list[Path]:
    """Where a pipeline's batches land: monitoring.input/<pipeline>/, and monitoring.input itself for the first pipeline."""
    root = Path(settings.input)
    return [root / pipeline] + ([root] if settings.tasks[:1] == [pipeline] else [])


def batch_name(path: Path, settings: MonitoringConfig) -> str:
    """How the store names a batch: its path under monitoring.input (a file given elsewhere: its name)."""
    path, root = path.resolve(), Path(settings.input).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def new_batches(settings: MonitoringConfig, pipeline: str, db: sqlite3.Connection) -> list[Path]:
    """The pipeline's csv batches that no earlier run scored for it."""
    done = {name for (name,) in db.execute("SELECT name FROM batches WHERE pipeline = ?", (pipeline,))}
    found = [p for folder in batch_folders(settings, pipeline) if folder.is_dir() for p in folder.glob("*.csv")]
    return sorted(p for p in found if batch_name(p, settings) not in done)


def store(db: sqlite3.Connection, pipeline: str, rows: list[Record], predictions: list[Record], version: str, batches: list[str]) -> None:
    """Each prediction (label: the label, or the entity types in order, space-separated) and the batches scored."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    db.executemany(
        f"INSERT INTO predictions ({PREDICTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["timestamp"], r["text"], " ".join(counted(p)), p["score"], version, r["batch"], now, pipeline)
         for r, p in zip(rows, predictions)],
    )
    db.executemany("INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", [(pipeline, name, now) for name in batches])
    db.commit()


def daily_counts(db: sqlite3.Connection, pipeline: str, tagger: bool) -> dict[str, tuple[int, Counter]]:
    """(texts, counts of labels or entity types) per day among all the pipeline's stored predictions."""
    days: dict[str, tuple[int, Counter]] = {}
    query = "SELECT substr(timestamp, 1, 10), label, count(*) FROM predictions WHERE pipeline = ? GROUP BY 1, 2 ORDER BY 1"
    for day, label, n in db.execute(query, (pipeline,)):
        texts, counts = days.get(day, (0, Counter()))
        for item in (label.split() if tagger else [label]):
            counts[item] += n
        days[day] = (texts + n, counts)
    return days
