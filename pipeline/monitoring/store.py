"""The prediction store that many writers share: every prediction the monitor made, with its pipeline
and model version, and the batches each pipeline has claimed and scored.

`monitoring.db` is a path (SQLite, in WAL mode so readers never wait for a writer) or a SQLAlchemy
URL such as postgresql://user@host/db (every machine writes to one server). Each prediction is keyed
by (pipeline, batch, position in the batch), so a batch stored twice is counted once. A monitor run
claims a batch before it scores it, so of two overlapping runs only one scores it; the claim of a run
that failed is released, and that of a killed run expires after CLAIM_SECONDS.

A pipeline's batches are csv files (`timestamp,text`) in `monitoring.input/<pipeline>/`, and, for
the first pipeline of monitoring.pipelines, directly in `monitoring.input`, where they lay when only
one pipeline was monitored. A SQLite store written by an earlier version is migrated in place.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from pipeline.databases import sqlalchemy_url
from pipeline.errors import ConfigError, DataError, ServiceError
from pipeline.params import MonitoringConfig
from pipeline.readers import read_file
from pipeline.records import Record

SERVED = "served/"  # the name of every batch of served answers begins so
CLAIM_SECONDS = 3600  # a killed run's batches are scored again by the first run after this
SCHEMA_LOCK = 7461_2026  # the PostgreSQL advisory lock taken while the tables are created
SQLITE_WAIT_SECONDS = 60  # how long a writer waits for another to finish its transaction
CONNECT_SECONDS = 10  # how long a connection to a database server may take before the store is called down

metadata = MetaData()
PREDICTIONS = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String, nullable=False),
    Column("batch", String, nullable=False),  # a drop-folder file's path under monitoring.input
    Column("position", Integer, nullable=False),  # the row's place in its batch
    Column("timestamp", String), Column("text", Text), Column("label", String), Column("score", Float),
    Column("model_version", String), Column("scored_at", String),
    UniqueConstraint("pipeline", "batch", "position", name="one_prediction_per_row"),
)
BATCHES = Table(
    "batches", metadata,
    Column("pipeline", String, primary_key=True), Column("name", String, primary_key=True),
    Column("claimed_by", String), Column("claimed_at", String),  # the run scoring it, and since when
    Column("scored_at", String),  # null while claimed
)
MENTIONS = Table(  # the entities a tagger pipeline's champion found in a stored text (monitoring/entities.py)
    "mentions", metadata,
    Column("pipeline", String, nullable=False), Column("batch", String, nullable=False), Column("position", Integer, nullable=False),
    Column("entity", String, nullable=False),  # the normalised name: case, spaces and legal suffixes ignored
    Column("mention", String),  # as the text wrote it, its first time there
    Column("model_version", String),  # the tagger's
    UniqueConstraint("pipeline", "batch", "position", "entity", name="one_mention_per_entity_and_row"),
)
TAGGED = Table(  # the scored batches whose texts the tagger has read, and by which version
    "tagged_batches", metadata,
    Column("pipeline", String, primary_key=True), Column("batch", String, primary_key=True),
    Column("tagger", String), Column("model_version", String), Column("tagged_at", String),
)
ALERTS = Table(  # negative-news alerts (monitoring/alerts.py): one per entity and window, whatever runs find it
    "alerts", metadata,
    Column("pipeline", String, primary_key=True), Column("entity", String, primary_key=True),  # the entity's key
    Column("window_start", String, primary_key=True), Column("window_end", String, primary_key=True),
    Column("figures", Text),  # JSON: the name, counts, shares, baseline, p-value and the texts that drove it
    Column("found_at", String), Column("sent_at", String),  # sent_at: null until its event is emitted
)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_name() -> str:
    """Who claims a batch: this machine, process and run."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_url(location: str) -> bool:
    """Whether monitoring.db names a database server rather than a SQLite file."""
    return "://" in location


def local_folder(location: str) -> Path | None:
    """The folder of a SQLite store; None for a database server."""
    return None if is_url(location) else Path(location).parent


def store_url(location: str) -> str:
    """A SQLAlchemy URL for monitoring.db: a path as a SQLite file; a URL as it is (PostgreSQL's through psycopg2)."""
    if is_url(location):
        return sqlalchemy_url(location)
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def sqlite_pragmas(connection, _record) -> None:
    """WAL (readers never wait for the writer), synced at checkpoints rather than at every commit (a power
    cut may lose the last commits, never corrupts); SQLAlchemy, not the driver, begins the transactions."""
    connection.isolation_level = None
    connection.execute(f"PRAGMA busy_timeout={SQLITE_WAIT_SECONDS * 1000}")
    deadline = time.monotonic() + SQLITE_WAIT_SECONDS
    while True:  # on a new file opened by several at once, the switch to WAL fails at once rather than waiting: retry
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    connection.execute("PRAGMA synchronous=NORMAL")


def begin_immediate(connection) -> None:
    """Take SQLite's write lock when a transaction begins, not when it first writes: two writers that
    both read first would otherwise deadlock, one of them failing at once."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_store(location: str, first: str) -> Engine:
    """The prediction store at monitoring.db, its tables created. A SQLite store of an earlier version is
    migrated in place, its rows given to `first` when they predate pipeline names."""
    try:
        url = store_url(location)
        waits = {"connect_args": {"connect_timeout": CONNECT_SECONDS}} if make_url(url).get_backend_name() == "postgresql" else {}
        engine = create_engine(url, **waits)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"params.yaml: monitoring.db '{location}' is neither a path nor a database URL SQLAlchemy can open ({exc}): "
                          "give a file path, or e.g. postgresql://user@host:5432/monitoring") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_pragmas)
        event.listen(engine, "begin", begin_immediate)
    try:
        with engine.begin() as connection:  # a migration happens whole or not at all
            if engine.dialect.name == "postgresql":  # two first opens at once: one creates the tables, the other waits
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            migrate(connection, first)
            metadata.create_all(connection)
    except OperationalError as exc:
        shown = make_url(location).render_as_string(hide_password=True) if is_url(location) else location
        raise ServiceError(f"monitoring.db {shown}: cannot open the prediction store ({' '.join(str(exc.orig).split())}): "
                           "start the database or fix the address") from None
    return engine


def migrate(connection, first: str) -> None:
    """Bring a SQLite store of an earlier version to today's tables: predictions gain their pipeline
    (`first`) and position, batches their pipeline and claim."""
    existing = inspect(connection)
    tables = set(existing.get_table_names())
    old = {name: {c["name"] for c in existing.get_columns(name)} for name in ("predictions", "batches") if name in tables}
    if "position" in old.get("predictions", {"position"}) and "claimed_by" in old.get("batches", {"claimed_by"}):
        return
    for name in old:
        connection.execute(text(f"ALTER TABLE {name} RENAME TO {name}_before"))
    metadata.create_all(connection)
    pipeline = "pipeline" if "pipeline" in old.get("predictions", ()) else ":first"
    if "predictions" in old:
        connection.execute(text(
            "INSERT INTO predictions (pipeline, batch, position, timestamp, text, label, score, model_version, scored_at) "
            f"SELECT {pipeline}, batch, ROW_NUMBER() OVER (PARTITION BY {pipeline}, batch ORDER BY rowid) - 1, "
            "timestamp, text, label, score, model_version, scored_at FROM predictions_before"), {"first": first})
    pipeline = "pipeline" if "pipeline" in old.get("batches", ()) else ":first"
    if "batches" in old:
        connection.execute(text(f"INSERT INTO batches (pipeline, name, scored_at) SELECT {pipeline}, name, scored_at FROM batches_before"),
                           {"first": first})
    for name in old:
        connection.execute(text(f"DROP TABLE {name}_before"))


def read_batch(path: Path, name: str) -> list[Record]:
    """Rows of a csv with columns timestamp,text (ISO 8601 timestamps; the date is their first 10 characters),
    each with the name of its batch and its position there."""
    rows = read_file(path, "csv", "utf-8")
    missing = {"timestamp", "text"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected timestamp,text)")
    return [{"timestamp": r["timestamp"], "text": r["text"], "batch": name, "position": i} for i, r in enumerate(rows) if r["text"].strip()]


def batch_folders(settings: MonitoringConfig, pipeline: str) -> list[Path]:
    """Where a pipeline's batches land: monitoring.input/<pipeline>/, and monitoring.input itself for the first pipeline."""
    root = Path(settings.input)
    return [root / pipeline] + ([root] if settings.pipelines[:1] == [pipeline] else [])


def batch_name(path: Path, settings: MonitoringConfig) -> str:
    """How the store names a batch: its path under monitoring.input (a file given elsewhere: its name)."""
    path, root = path.resolve(), Path(settings.input).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def new_batches(settings: MonitoringConfig, pipeline: str, engine: Engine) -> list[Path]:
    """The pipeline's csv batches that no run has scored for it yet."""
    query = select(BATCHES.c.name).where(BATCHES.c.pipeline == pipeline, BATCHES.c.scored_at.is_not(None))
    with engine.begin() as connection:
        done = set(connection.scalars(query))
    found = [p for folder in batch_folders(settings, pipeline) if folder.is_dir() for p in folder.glob("*.csv")]
    return sorted(p for p in found if batch_name(p, settings) not in done)


def insert(engine: Engine, table: Table):
    """INSERT with the dialect's ON CONFLICT clauses (SQLite and PostgreSQL share them)."""
    return (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(table)


def claim(engine: Engine, pipeline: str, names: list[str], by: str) -> list[str]:
    """Claim unscored batches for the run `by`; returns those it got: not scored, and not claimed by a
    live run (a claim older than CLAIM_SECONDS is a killed run's, and is taken over)."""
    stale = (datetime.now(timezone.utc) - timedelta(seconds=CLAIM_SECONDS)).isoformat(timespec="seconds")
    got = []
    for name in names:
        with engine.begin() as connection:
            taken = connection.execute(insert(engine, BATCHES).values(pipeline=pipeline, name=name, claimed_by=by, claimed_at=now())
                                       .on_conflict_do_nothing()).rowcount
            if not taken:  # one statement: of two runs taking over the same stale claim, one wins
                taken = connection.execute(
                    update(BATCHES).where(BATCHES.c.pipeline == pipeline, BATCHES.c.name == name, BATCHES.c.scored_at.is_(None),
                                          (BATCHES.c.claimed_at.is_(None)) | (BATCHES.c.claimed_at < stale))
                    .values(claimed_by=by, claimed_at=now())).rowcount
        if taken:
            got.append(name)
    return got


def release(engine: Engine, pipeline: str, names: list[str], by: str) -> None:
    """Give back the run's claims on batches it did not score, for the next run."""
    with engine.begin() as connection:
        connection.execute(BATCHES.delete().where(BATCHES.c.pipeline == pipeline, BATCHES.c.name.in_(names),
                                                  BATCHES.c.claimed_by == by, BATCHES.c.scored_at.is_(None)))


@contextmanager
def claimed(engine: Engine, pipeline: str, names: list[str]) -> Iterator[list[str]]:
    """The batches among `names` this run claimed; claims it did not score are released if the run fails."""
    by = run_name()
    got = claim(engine, pipeline, names, by)
    try:
        yield got
    except BaseException:
        release(engine, pipeline, got, by)
        raise


def prediction_row(pipeline: str, row: Record, observation: Record, version: str, scored_at: str) -> Record:
    """A row's prediction (what the monitor reads in it, Task.observation) as the store keeps it (label: what it
    counted, the label or the entity types in order, space-separated)."""
    return {"pipeline": pipeline, "batch": row["batch"], "position": row["position"], "timestamp": row["timestamp"], "text": row["text"],
            "label": " ".join(observation["counted"]), "score": observation["score"], "model_version": version, "scored_at": scored_at}


def read_counted(label: str, several: bool) -> list[str]:
    """What a stored prediction counted (see `prediction_row`): the label, or with `several` the entity types."""
    return label.split() if several else [label]


def add_predictions(connection: Connection, engine: Engine, values: list[Record], count: bool = True) -> int | None:
    """Insert prediction rows, leaving out any stored before; returns how many were added (with `count`)."""
    if not values:
        return 0
    new = insert(engine, PREDICTIONS).on_conflict_do_nothing()
    if not count:  # one executemany, without fetching a row back per insert
        connection.execute(new, values)
        return None
    return len(connection.execute(new.returning(PREDICTIONS.c.id), values).all())


def store(engine: Engine, pipeline: str, rows: list[Record], observations: list[Record], version: str, names: list[str]) -> int:
    """Each row's prediction (what the monitor reads in it, Task.observation), and the batches marked done,
    in one transaction; a row stored before is not stored again. Returns the rows added."""
    scored_at = now()
    done = insert(engine, BATCHES)
    done = done.on_conflict_do_update(index_elements=["pipeline", "name"], set_={"scored_at": done.excluded.scored_at})
    with engine.begin() as connection:
        added = add_predictions(connection, engine, [prediction_row(pipeline, r, o, version, scored_at) for r, o in zip(rows, observations)])
        if names:
            connection.execute(done, [{"pipeline": pipeline, "name": name, "scored_at": scored_at} for name in names])
    return added


def new_served(engine: Engine, pipeline: str) -> list[str]:
    """The batches of served answers (see served.py) that no monitor run has checked yet."""
    query = select(BATCHES.c.name).where(BATCHES.c.pipeline == pipeline, BATCHES.c.name.startswith(SERVED), BATCHES.c.scored_at.is_(None))
    with engine.begin() as connection:
        return sorted(connection.scalars(query))


def stored_rows(engine: Engine, pipeline: str, names: list[str], several: bool) -> list[tuple[Record, Record, str]]:
    """(row, observation, model version) of each text stored in the batches `names`, in order; `several`:
    a prediction counts several things (Counts.several)."""
    columns = PREDICTIONS.c
    query = (select(columns.batch, columns.position, columns.timestamp, columns.text, columns.label, columns.score, columns.model_version)
             .where(columns.pipeline == pipeline, columns.batch.in_(names)).order_by(columns.batch, columns.position))
    with engine.begin() as connection:
        found = connection.execute(query).all()
    return [({"batch": batch, "position": position, "timestamp": timestamp, "text": text},
             {"counted": read_counted(label, several), "score": score}, version)
            for batch, position, timestamp, text, label, score, version in found]


def daily_counts(engine: Engine, pipeline: str, several: bool) -> dict[str, tuple[int, Counter]]:
    """(texts, counts of what they counted: labels or entity types) per day among all the pipeline's stored
    predictions; `several` as in `stored_rows`."""
    day = func.substr(PREDICTIONS.c.timestamp, 1, 10)
    query = (select(day, PREDICTIONS.c.label, func.count()).where(PREDICTIONS.c.pipeline == pipeline)
             .group_by(day, PREDICTIONS.c.label).order_by(day))
    days: dict[str, tuple[int, Counter]] = {}
    with engine.begin() as connection:
        for date, label, n in connection.execute(query):
            texts, counts = days.get(date, (0, Counter()))
            for item in read_counted(label, several):
                counts[item] += n
            days[date] = (texts + n, counts)
    return days
