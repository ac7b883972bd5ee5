"""The log of served answers: `finetune serve` hands each answer here, and one thread writes them to
the prediction store, off the request path. The queue is bounded: while the store is slow or down,
answers that do not fit are dropped from the log and counted, and no request waits or fails for it.

A server writes each pipeline's answers into a batch of its own, `served/<server>/<n>`, that it
holds claimed for ROLL_SECONDS, then hands over (releases its claim) and opens the next. The monitor
claims a handed-over batch and checks it like a drop-folder batch (its rows are scored already, by
the version that answered). A killed server's last batch is taken once its claim expires.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, update
from sqlalchemy.exc import SQLAlchemyError

from pipeline.errors import UserError
from pipeline.monitoring.store import BATCHES, SERVED, add_predictions, insert, now, open_store, prediction_row, run_name

log = logging.getLogger("uvicorn.error")  # beside the server's own messages
ROLL_SECONDS = 60.0  # how long a server writes into one batch before handing it to the monitor
WRITE_EVERY_SECONDS = 1.0  # at most one transaction a second: more rows each, less work per row
WRITE_AT_MOST = 5000  # requests per transaction: with one a second, the most a server logs per second
WARN_EVERY_SECONDS = 60.0  # at most one warning a minute about dropped answers


@dataclass(frozen=True)
class Answers:
    """One request's answers, as the store keeps them."""

    pipeline: str
    version: str
    timestamp: str
    texts: list[str]
    observations: list[dict]  # what the monitor reads in each answer (Task.observation)


@dataclass(frozen=True)
class OpenBatch:
    """The batch a server is writing a pipeline's answers into."""

    name: str
    opened: float  # time.monotonic()
    rows: int = 0


@dataclass
class Counts:
    """What became of the answers offered (texts): written, or dropped because the queue was full or a write failed."""

    written: Counter = field(default_factory=Counter)  # per pipeline
    dropped_queue_full: int = 0
    dropped_write_failed: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_write_failed


class PredictionLog:
    """Writes a `share` of the answers of `pipelines` to the store at `location`, holding at most
    `capacity` requests in memory."""

    def __init__(self, location: str, first: str, pipelines: list[str], share: float, capacity: int):
        self.location, self.first, self.pipelines, self.share = location, first, set(pipelines), share
        self.queue: queue.Queue[Answers] = queue.Queue(maxsize=capacity)
        self.counts = Counts()
        self.server = run_name()  # names this server's batches
        self.numbers = itertools.count(1)
        self.open: dict[str, OpenBatch] = {}  # by pipeline; replaced only once a write commits
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.write_until_stopped, name="prediction-log", daemon=True)
        self.warned_at = -WARN_EVERY_SECONDS

    def depth(self) -> int:
        """Requests waiting to be written."""
        return self.queue.qsize()

    def offer(self, pipeline: str, version: str, texts: list[str], observations: list[dict]) -> None:
        """Queue a request's answers, as the monitor reads them (Task.observation), without ever waiting (the
        sampled share of them)."""
        if pipeline not in self.pipelines:
            return
        if self.share < 1:
            kept = [i for i in range(len(texts)) if random.random() < self.share]
            texts, observations = [texts[i] for i in kept], [observations[i] for i in kept]
        if not texts:
            return
        try:
            self.queue.put_nowait(Answers(pipeline, version, now(), texts, observations))
        except queue.Full:
            self.counts.dropped_queue_full += len(texts)
            self.warn(f"the prediction log's queue is full ({self.queue.maxsize} requests): answers are left out of the store")

    def warn(self, message: str) -> None:
        """A warning, at most once a minute, with the count of answers dropped so far."""
        if time.monotonic() - self.warned_at >= WARN_EVERY_SECONDS:
            self.warned_at = time.monotonic()
            log.warning("%s (%d dropped so far)", message, self.counts.dropped)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and hand the open batches over (for up to `timeout` seconds), then stop."""
        self.stopping.set()
        self.thread.join(timeout)

    def take(self) -> list[Answers]:
        """What is queued, up to WRITE_AT_MOST requests, waiting a moment for the first."""
        try:
            answers = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(answers) < WRITE_AT_MOST and not self.queue.empty():
            answers.append(self.queue.get_nowait())
        return answers

    def write_until_stopped(self) -> None:
        """The writer thread: write what is queued, one transaction at a time; when idle, hand over the
        batches open for ROLL_SECONDS; once stopped, write the rest and hand over every batch."""
        engine = None
        while True:
            stopping = self.stopping.is_set()  # read first: what was queued before stop() is still written
            answers = self.take()
            if not answers and not self.open:  # nothing to write or hand over: no need for the store
                if stopping:
                    return
                continue
            try:
                engine = engine or open_store(self.location, self.first)
                if answers:
                    began = time.monotonic()
                    self.write(engine, answers)
                    self.stopping.wait(WRITE_EVERY_SECONDS - (time.monotonic() - began))  # stop() cuts the wait short
                    continue
                self.hand_over(engine, every=stopping)
            except (SQLAlchemyError, UserError, OSError) as exc:  # the store is down or refuses: serving goes on
                self.counts.dropped_write_failed += sum(len(a.texts) for a in answers)
                self.warn(f"writing served answers to the prediction store failed ({' '.join(str(exc).split())[:300]})")
            if stopping and not answers:
                return

    def write(self, engine: Engine, answers: list[Answers]) -> None:
        """The answers into each pipeline's open batch (a new one when it has none), in one transaction."""
        scored_at, current, values = now(), dict(self.open), []
        with engine.begin() as connection:
            for pipeline in sorted({a.pipeline for a in answers}):
                batch = current.get(pipeline) or self.open_batch(connection, engine, pipeline)
                answered = [(a, text, p) for a in answers if a.pipeline == pipeline for text, p in zip(a.texts, a.observations)]
                values += [prediction_row(pipeline, {"batch": batch.name, "position": batch.rows + i, "timestamp": a.timestamp, "text": text},
                                          p, a.version, scored_at) for i, (a, text, p) in enumerate(answered)]
                current[pipeline] = OpenBatch(batch.name, batch.opened, batch.rows + len(answered))
            add_predictions(connection, engine, values, count=False)
        self.open = current
        self.counts.written.update(value["pipeline"] for value in values)

    def open_batch(self, connection: Connection, engine: Engine, pipeline: str) -> OpenBatch:
        """A new batch for a pipeline's answers, claimed by this server while it writes into it."""
        name = f"{SERVED}{self.server}/{next(self.numbers)}"
        connection.execute(insert(engine, BATCHES).values(pipeline=pipeline, name=name, claimed_by=self.server, claimed_at=now()))
        return OpenBatch(name, time.monotonic())

    def hand_over(self, engine: Engine, every: bool) -> None:
        """Release the claim on the batches open for ROLL_SECONDS (`every`: on all), so the monitor takes them."""
        due = {p: b for p, b in self.open.items() if every or time.monotonic() - b.opened >= ROLL_SECONDS}
        if not due:
            return
        with engine.begin() as connection:
            connection.execute(update(BATCHES).where(BATCHES.c.name.in_([b.name for b in due.values()]), BATCHES.c.claimed_by == self.server)
                               .values(claimed_by=None, claimed_at=None))
        self.open = {p: b for p, b in self.open.items() if p not in due}
