"""The monitoring library without a server or a flow: the prediction store (its migration, which batches
are new, what is stored and counted per day), the drift statistics on known counts, the reference of a
champion (cached per version) and the report's daily figures and plots."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import LABELS, make_rows, tiny_params, write_params, write_texts

SETTINGS = {"label_shift_pvalue": 0.01, "label_shift_distance": 0.1, "confidence_drop": 0.1, "oov_increase": 0.15}


OLD_STORES = {  # the store as earlier versions wrote it: before pipelines were named, and before rows were keyed
    "unnamed": ["CREATE TABLE predictions (timestamp TEXT, text TEXT, label TEXT, score REAL, model_version TEXT, batch TEXT, scored_at TEXT)",
                "CREATE TABLE batches (name TEXT PRIMARY KEY, scored_at TEXT)",
                "INSERT INTO predictions VALUES ('2026-11-26T09:00:00Z', 'Profit rose', 'positive', 0.9, '1', 'day-1.csv', '2026-11-26')",
                "INSERT INTO predictions VALUES ('2026-11-26T10:00:00Z', 'Loss widened', 'negative', 0.8, '1', 'day-1.csv', '2026-11-26')",
                "INSERT INTO batches VALUES ('day-1.csv', '2026-11-26')"],
    "unkeyed": ["CREATE TABLE predictions (timestamp, text, label, score, model_version, batch, scored_at, pipeline)",
                "CREATE TABLE batches (pipeline TEXT, name TEXT, scored_at TEXT, PRIMARY KEY (pipeline, name))",
                "INSERT INTO predictions VALUES ('2026-11-26T09:00:00Z', 'Profit rose', 'positive', 0.9, '1', 'day-1.csv', '2026-11-26', 'sentiment')",
                "INSERT INTO predictions VALUES ('2026-11-26T10:00:00Z', 'Loss widened', 'negative', 0.8, '1', 'day-1.csv', '2026-11-26', 'sentiment')",
                "INSERT INTO batches VALUES ('sentiment', 'day-1.csv', '2026-11-26')"],
}


@pytest.mark.parametrize("old", OLD_STORES)
def test_monitor_migrates_an_old_prediction_store_in_place(tmp_path, old):
    import sqlite3

    from pipeline.monitoring.store import new_batches, open_store
    from pipeline.params import MonitoringConfig

    path = tmp_path / "predictions.db"
    with sqlite3.connect(path) as db:
        for statement in OLD_STORES[old]:
            db.execute(statement)
    for _ in range(2):  # a second open finds it migrated
        open_store(str(path), "sentiment").dispose()
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT pipeline, batch, position, label FROM predictions ORDER BY timestamp").fetchall() == [
                ("sentiment", "day-1.csv", 0, "positive"), ("sentiment", "day-1.csv", 1, "negative")]
            assert db.execute("SELECT pipeline, name, scored_at FROM batches").fetchall() == [("sentiment", "day-1.csv", "2026-11-26")]
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    incoming = tmp_path / "incoming"
    for batch in ("day-1.csv", "day-2.csv", "intents/day-1.csv"):
        write_texts(incoming / batch, ["some text"])
    settings = MonitoringConfig(pipelines=["sentiment", "intents"], input=str(incoming))
    engine = open_store(str(path), "sentiment")
    assert new_batches(settings, "sentiment", engine) == [incoming / "day-2.csv"]  # files directly in input: the first pipeline's
    assert new_batches(settings, "intents", engine) == [incoming / "intents" / "day-1.csv"]  # the same name, another pipeline


def test_a_store_that_cannot_be_opened_is_one_line(tmp_path):
    from pipeline.errors import ConfigError, ServiceError
    from pipeline.monitoring.store import open_store

    with pytest.raises(ConfigError, match="monitoring.db 'nosuchdb://x' is neither a path nor a database URL"):
        open_store("nosuchdb://x", "sentiment")
    with pytest.raises(ServiceError, match=r"monitoring.db postgresql://u@127.0.0.1:9/m: cannot open the prediction store .*start the database"):
        open_store("postgresql://u@127.0.0.1:9/m", "sentiment")  # nothing listens on port 9


def test_a_new_store_opened_by_several_at_once_opens_for_each(tmp_path):
    import threading

    from pipeline.monitoring.store import open_store

    errors = []

    def open_it(location: str) -> None:
        try:
            open_store(location, "sentiment")
        except Exception as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(exc)

    for round in range(60):  # the switch to WAL on a new file failed at once now and then ("database is locked")
        threads = [threading.Thread(target=open_it, args=(str(tmp_path / f"store-{round}.db"),)) for _ in range(3)]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]
    assert errors == []


def test_a_batch_is_read_with_its_name_and_a_wrong_header_is_named(tmp_path):
    from pipeline.errors import DataError
    from pipeline.monitoring.store import read_batch

    rows = read_batch(write_texts(tmp_path / "day.csv", ["Profit rose", " ", "Loss widened"]), "day.csv")
    assert [(r["text"], r["batch"]) for r in rows] == [("Profit rose", "day.csv"), ("Loss widened", "day.csv")]  # blank text dropped
    (tmp_path / "bad.csv").write_text("time,body\n2026-11-26,Profit rose\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) text, timestamp \(expected timestamp,text\)"):
        read_batch(tmp_path / "bad.csv", "bad.csv")


def test_predictions_are_stored_once_per_row_and_counted_per_day(tmp_path):
    from pipeline.monitoring.store import daily_counts, new_batches, open_store, store
    from pipeline.params import MonitoringConfig

    settings = MonitoringConfig(pipelines=["sentiment", "ner"], input=str(tmp_path / "incoming"))
    engine = open_store(str(tmp_path / "predictions.db"), "sentiment")
    rows = [{"timestamp": f"2026-11-2{6 + i % 2}T09:00:00Z", "text": f"text {i}", "batch": "sentiment/day.csv", "position": i} for i in range(4)]
    labels = [{"counted": [label], "score": 0.9} for label in ("positive", "negative", "positive", "neutral")]
    assert store(engine, "sentiment", rows, labels, "3", ["sentiment/day.csv"]) == 4  # a batch is named by its path under monitoring.input
    assert store(engine, "sentiment", rows, labels, "3", ["sentiment/day.csv"]) == 0  # the same rows again: counted once
    entities = [{"counted": ["ORG", "PER"], "score": 0.8}, {"counted": [], "score": 0.7}]
    store(engine, "ner", rows[:2], entities, "1", ["ner/day.csv"])

    assert daily_counts(engine, "sentiment", several=False) == {
        "2026-11-26": (2, Counter({"positive": 2})), "2026-11-27": (2, Counter({"negative": 1, "neutral": 1}))}
    assert daily_counts(engine, "ner", several=True) == {"2026-11-26": (1, Counter({"ORG": 1, "PER": 1})), "2026-11-27": (1, Counter())}
    write_texts(tmp_path / "incoming" / "sentiment" / "day.csv", ["text"])
    assert new_batches(settings, "sentiment", engine) == []  # scored already: never counted twice by a later run


def test_a_batch_is_claimed_by_one_run_and_a_failed_or_killed_runs_claim_is_not_kept(tmp_path):
    from sqlalchemy import text

    from pipeline.monitoring.store import batch_name, claim, claimed, new_batches, open_store
    from pipeline.params import MonitoringConfig

    settings = MonitoringConfig(pipelines=["sentiment"], input=str(tmp_path / "incoming"))
    engine = open_store(str(tmp_path / "predictions.db"), "sentiment")
    for day in ("day-1", "day-2"):
        write_texts(tmp_path / "incoming" / "sentiment" / f"{day}.csv", ["text"])
    assert claim(engine, "sentiment", ["sentiment/day-1.csv"], "run-a") == ["sentiment/day-1.csv"]
    assert claim(engine, "sentiment", ["sentiment/day-1.csv", "sentiment/day-2.csv"], "run-b") == ["sentiment/day-2.csv"]

    new = [batch_name(path, settings) for path in new_batches(settings, "sentiment", engine)]
    with pytest.raises(RuntimeError), claimed(engine, "sentiment", new) as got:
        assert got == []  # both are claimed by live runs
        raise RuntimeError("scoring failed")
    with engine.begin() as connection:  # run-a was killed two hours ago
        connection.execute(text("UPDATE batches SET claimed_at = '2026-01-01T00:00:00+00:00' WHERE claimed_by = 'run-a'"))
    with pytest.raises(RuntimeError), claimed(engine, "sentiment", new) as got:
        assert got == ["sentiment/day-1.csv"]  # a killed run's claim expires
        raise RuntimeError("scoring failed")
    assert claim(engine, "sentiment", ["sentiment/day-1.csv"], "run-c") == ["sentiment/day-1.csv"]  # the failed run released it


def score_every_batch(location: str, incoming: str, start, results) -> None:
    """One monitor run as the store sees it (another process): claim the new batches, score, store; then
    store a batch it did not claim (a file named by hand) as every run does."""
    from pipeline.monitoring.store import batch_name, claimed, new_batches, open_store, read_batch, store
    from pipeline.params import MonitoringConfig

    settings = MonitoringConfig(pipelines=["sentiment"], input=incoming)
    start.wait()  # both runs begin at the same moment, the store's tables not created yet
    engine = open_store(location, "sentiment")
    scored = []
    for batch in new_batches(settings, "sentiment", engine):  # one at a time, so the runs interleave
        with claimed(engine, "sentiment", [batch_name(batch, settings)]) as got:
            for name in got:
                rows = read_batch(batch, name)
                store(engine, "sentiment", rows, [{"counted": ["neutral"], "score": 0.5}] * len(rows), "1", [name])
                scored.append(batch.name)
    by_hand = Path(incoming).parent / "by-hand.csv"
    rows = read_batch(by_hand, by_hand.name)
    store(engine, "sentiment", rows, [{"counted": ["neutral"], "score": 0.5}] * len(rows), "1", [by_hand.name])
    results.put(scored)


def two_runs_at_once(location: str, tmp_path: Path) -> None:
    """Two processes open a new store and score the same 30 batches and one file at once: each batch is scored
    by one, each row stored once."""
    import multiprocessing

    from sqlalchemy import text

    from pipeline.monitoring.store import open_store

    incoming = tmp_path / "incoming"
    for i in range(30):
        write_texts(incoming / "sentiment" / f"day-{i:02d}.csv", [f"text {i} {j}" for j in range(20)])
    write_texts(tmp_path / "by-hand.csv", [f"by hand {j}" for j in range(20)])
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    runs = [context.Process(target=score_every_batch, args=(location, str(incoming), start, results)) for _ in range(2)]
    for run in runs:
        run.start()
    start.set()
    scored = [results.get(timeout=120) for _ in runs]
    for run in runs:
        run.join(timeout=60)
        assert run.exitcode == 0
    assert sorted(scored[0] + scored[1]) == [f"day-{i:02d}.csv" for i in range(30)]  # each batch by one run only
    with open_store(location, "sentiment").begin() as connection:
        assert connection.execute(text("SELECT count(*), count(DISTINCT batch || '#' || position) FROM predictions")).one() == (620, 620)
        assert connection.execute(text("SELECT count(*) FROM batches WHERE scored_at IS NOT NULL")).scalar() == 31


def test_two_runs_at_once_count_each_row_once_on_sqlite(tmp_path):
    two_runs_at_once(str(tmp_path / "predictions.db"), tmp_path)


@pytest.mark.e2e
def test_two_runs_at_once_count_each_row_once_on_postgresql(tmp_path, postgres):
    two_runs_at_once(postgres.create_database("monitoring"), tmp_path)


def served_batches(location: str) -> list[tuple]:
    """(pipeline, name, claimed_by, scored_at) of every batch in the store."""
    from sqlalchemy import text

    from pipeline.monitoring.store import open_store

    with open_store(location, "sentiment").begin() as connection:
        return connection.execute(text("SELECT pipeline, name, claimed_by, scored_at FROM batches ORDER BY name")).all()


def served_answers_round_trip(location: str) -> None:
    """Answers offered to a prediction log reach the store at `location` in batches of the server's, which
    the monitor can claim once they are handed over, with their predictions as they were answered."""
    from pipeline.monitoring import served
    from pipeline.monitoring.store import claim, new_served, open_store, stored_rows

    log = served.PredictionLog(location, "sentiment", ["sentiment", "ner"], share=1.0, capacity=100)
    log.offer("sentiment", "3", ["Profit rose", "Loss widened"], [{"counted": ["positive"], "score": 0.9}, {"counted": ["negative"], "score": 0.8}])
    log.offer("ner", "1", ["Anna Berg joined Norvik Bank"], [{"counted": ["PER", "ORG"], "score": 0.7}])
    log.offer("translation", "2", ["Guten Tag"], [{"counted": [], "score": 1.0}])  # not monitored: not logged
    log.start()
    engine = open_store(location, "sentiment")
    deadline = time.monotonic() + 30
    while sum(log.counts.written.values()) < 3:
        assert time.monotonic() < deadline, "the writer wrote nothing"
        time.sleep(0.05)
    assert [(p, claimed_by) for p, _, claimed_by, _ in served_batches(location)] == [("ner", log.server), ("sentiment", log.server)]
    assert new_served(engine, "sentiment") != [] and claim(engine, "sentiment", new_served(engine, "sentiment"), "monitor") == []  # still open
    log.offer("sentiment", "4", ["Sales were flat"], [{"counted": ["neutral"], "score": 0.6}])
    log.stop()  # writes what is queued, then hands every batch over
    assert not log.thread.is_alive() and log.counts.written == {"sentiment": 3, "ner": 1} and log.counts.dropped == 0
    assert all(claimed_by is None and scored_at is None for *_, claimed_by, scored_at in served_batches(location))
    names = new_served(engine, "sentiment")
    assert claim(engine, "sentiment", names, "monitor") == names  # handed over: the monitor's now
    rows = stored_rows(engine, "sentiment", names, several=False)
    assert [(r["text"], r["position"], p, version) for r, p, version in rows] == [
        ("Profit rose", 0, {"counted": ["positive"], "score": 0.9}, "3"), ("Loss widened", 1, {"counted": ["negative"], "score": 0.8}, "3"),
        ("Sales were flat", 2, {"counted": ["neutral"], "score": 0.6}, "4")]
    assert [p for _, p, _ in stored_rows(engine, "ner", new_served(engine, "ner"), several=True)] == [
        {"counted": ["PER", "ORG"], "score": 0.7}]


def test_served_answers_are_written_off_the_request_path_in_batches_the_monitor_takes_once_handed_over(tmp_path):
    served_answers_round_trip(str(tmp_path / "predictions.db"))


@pytest.mark.e2e
def test_served_answers_round_trip_through_postgresql(postgres):
    served_answers_round_trip(postgres.create_database("served"))


def test_a_served_batch_is_handed_over_after_roll_seconds_while_the_server_runs(tmp_path, monkeypatch):
    from pipeline.monitoring import served

    monkeypatch.setattr(served, "ROLL_SECONDS", 0.3)
    location = str(tmp_path / "predictions.db")
    log = served.PredictionLog(location, "sentiment", ["sentiment"], share=1.0, capacity=100)
    log.start()
    log.offer("sentiment", "3", ["Profit rose"], [{"counted": ["positive"], "score": 0.9}])
    deadline = time.monotonic() + 30
    while not (served_batches(location) and served_batches(location)[0][2] is None):
        assert time.monotonic() < deadline, "the batch was never handed over"
        time.sleep(0.05)
    log.offer("sentiment", "3", ["Loss widened"], [{"counted": ["negative"], "score": 0.8}])
    log.stop()
    assert [name.rsplit("/", 1)[1] for _, name, _, _ in served_batches(location)] == ["1", "2"]  # the next answer: a new batch


def test_a_full_queue_or_a_store_that_is_down_drops_answers_and_counts_them(tmp_path):
    from pipeline.monitoring import served

    log = served.PredictionLog(str(tmp_path / "predictions.db"), "sentiment", ["sentiment"], share=1.0, capacity=1)
    started = time.perf_counter()
    for _ in range(3):  # the writer is not running: the first request fills the queue
        log.offer("sentiment", "3", ["a", "b"], [{"counted": ["positive"], "score": 0.9}] * 2)
    assert time.perf_counter() - started < 0.1 and log.depth() == 1 and log.counts.dropped_queue_full == 4

    down = served.PredictionLog("postgresql://u@127.0.0.1:9/m", "sentiment", ["sentiment"], share=1.0, capacity=10)
    down.start()
    down.offer("sentiment", "3", ["a", "b"], [{"counted": ["positive"], "score": 0.9}] * 2)
    down.stop()
    assert not down.thread.is_alive() and down.counts.dropped_write_failed == 2 and sum(down.counts.written.values()) == 0


def test_a_share_of_the_answers_is_logged(tmp_path):
    from pipeline.monitoring import served

    log = served.PredictionLog(str(tmp_path / "predictions.db"), "sentiment", ["sentiment"], share=0.25, capacity=2000)
    for _ in range(1000):
        log.offer("sentiment", "3", ["a", "b"], [{"counted": ["positive"], "score": 0.9}] * 2)
    kept = sum(len(answers.texts) for answers in list(log.queue.queue))
    assert 400 < kept < 600  # 2000 texts, a quarter of them: 500 +- 5 standard deviations


def test_the_chi_square_oov_and_confidence_figures_on_known_inputs():
    from pipeline.monitoring.drift import label_shift_pvalue, measure_drift, oov_rate
    from pipeline.params import MonitoringConfig

    assert oov_rate(["Profit rose 5%", "profit fell"], {"profit", "rose"}) == pytest.approx(1 / 4)  # digits are not words
    assert label_shift_pvalue({"positive": 50, "negative": 50}, {"positive": 50, "negative": 50}) == pytest.approx(1.0)
    assert label_shift_pvalue({"positive": 50, "negative": 50}, {"positive": 95, "negative": 5}) < 1e-6
    assert label_shift_pvalue({"positive": 10}, {"positive": 3}) == 1.0 and label_shift_pvalue({"ORG": 3}, {}) == 1.0

    ref = {"labels": {"positive": 50, "negative": 50}, "mean_confidence": 0.9, "oov_rate": 0.05, "vocabulary": ["profit", "rose"]}
    same = [{"counted": [label], "score": 0.88} for label in ["positive", "negative"] * 50]
    drift = measure_drift(ref, ["profit rose"] * 100, same, MonitoringConfig(**SETTINGS), "label_shift")
    assert not any(figure["drifted"] for figure in drift.values())
    unsure = [{"counted": ["positive"], "score": 0.5}] * 100
    drift = measure_drift(ref, ["stir the soup"] * 100, unsure, MonitoringConfig(**SETTINGS), "label_shift")
    assert drift["label_shift"]["drifted"] and drift["oov_rate"]["increase"] == pytest.approx(0.95)
    assert drift["confidence"]["drop"] == pytest.approx(0.4) and drift["confidence"]["drifted"]


def test_a_tiny_real_difference_in_a_large_window_does_not_alarm_and_only_the_alarm_figures_fire():
    from pipeline.monitoring.drift import fired, label_distance, label_shift_pvalue, measure_drift
    from pipeline.params import MonitoringConfig

    assert label_distance({"a": 50, "b": 50}, {"a": 70, "b": 30}) == pytest.approx(0.2)  # a fifth would have to change
    assert label_distance({"a": 10}, {"b": 4}) == 1.0 and label_distance({"a": 10}, {}) == 0.0
    reference = {"neutral": 3300, "positive": 1700}
    larger = {"neutral": 3500, "positive": 1500}  # 70% neutral against 66%: real, and small
    assert label_shift_pvalue(reference, larger) < 1e-4 and label_distance(reference, larger) == pytest.approx(0.04)
    ref = {"labels": reference, "mean_confidence": 0.9, "oov_rate": 0.05, "vocabulary": ["profit", "rose"]}
    predictions = [{"counted": [label], "score": 0.7} for label, count in larger.items() for _ in range(count)]
    drift = measure_drift(ref, ["profit rose"] * 5000, predictions, MonitoringConfig(**SETTINGS), "label_shift")
    assert not drift["label_shift"]["drifted"] and drift["confidence"]["drifted"]  # confidence fell by 0.2
    assert fired(drift, MonitoringConfig(**SETTINGS, alarm=["label_shift", "oov_rate"])) == []  # reported, not alarmed on
    assert fired(drift, MonitoringConfig(**SETTINGS, alarm=["confidence"])) == ["confidence"]
    tagger = {"entity_types": {**drift["label_shift"], "drifted": True}}
    assert fired(tagger, MonitoringConfig(**SETTINGS, alarm=["label_shift"])) == ["entity_types"]  # the chi-square of either kind


def test_the_class_probability_and_embedding_shift_tests_on_known_samples():
    import numpy as np

    from pipeline.monitoring.drift import class_probability_shift, embedding_shift

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([5, 2, 1], 300)
    assert class_probability_shift(probabilities, probabilities) == (0.0, 1.0)  # the same sample: no difference at all
    statistic, pvalue = class_probability_shift(probabilities, rng.dirichlet([1, 2, 5], 100))
    assert statistic > 0.5 and pvalue < 1e-6
    embeddings = rng.normal(size=(300, 16))
    assert embedding_shift(embeddings, embeddings) == (pytest.approx(0.0, abs=1e-12), 1.0)
    mmd, pvalue = embedding_shift(embeddings, rng.normal(0.5, 1, size=(100, 16)), permutations=99)
    assert mmd > 0 and pvalue == 0.01  # no random split is as far apart: the smallest p-value 99 splits can give

    # Same distribution on both sides: each test alarms at p < 0.05 in about 5% of draws (Bonferroni: at most)
    alarms = [(class_probability_shift(probabilities, rng.dirichlet([5, 2, 1], 100))[1] < 0.05,
               embedding_shift(embeddings, rng.normal(size=(100, 16)), permutations=99, seed=i)[1] < 0.05) for i in range(100)]
    assert all(sum(column) <= 12 for column in zip(*alarms))  # 5 expected; 12 is 3 standard deviations above


@pytest.fixture
def sentiment(tmp_path, monkeypatch, tiny_model):
    """The sentiment task of tiny params, with the tiny random model (cwd: a temp folder)."""
    from pipeline.tasks import get_task, load_params

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(tiny_model))
    task = get_task("sentiment", load_params().pipeline("sentiment"))
    return task, *task.load_model(str(tiny_model))


def test_the_reference_is_the_champions_own_from_its_run_and_cached_per_version(tmp_path, sentiment):
    import mlflow

    from pipeline import tracking
    from pipeline.errors import ModelError
    from pipeline.monitoring.reference import REFERENCES, log_reference_data, reference
    from pipeline.records import save_records

    task, model, tokenizer = sentiment
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model("fin-sentiment")
    rows = [{"text": r["text"], "label": r["label"]} for r in make_rows(40)]
    save_records(tmp_path / "val.jsonl", rows[30:])
    with mlflow.start_run() as run:  # what the train stage keeps in the model's run
        log_reference_data(task, rows[:30], tmp_path / "val.jsonl")
    version = client.create_model_version("fin-sentiment", f"runs:/{run.info.run_id}/model", run.info.run_id, tags={"data_hash": "a1"})

    workspace = tmp_path / "workspace"  # holds nothing: the run has it all
    ref = reference(task, model, tokenizer, version, workspace)
    assert sum(ref["labels"].values()) == 10 and set(ref["labels"]) <= set(LABELS) and 0 < ref["mean_confidence"] <= 1
    assert ref["vocabulary"] == sorted({w for r in rows[:30] for w in r["text"].lower().rstrip(".").split()})
    assert ref["data_hash"] == "a1" and (REFERENCES / "fin-sentiment-v1.json").exists()
    assert reference(task, model, tokenizer, version, workspace) == ref  # from the cache

    with mlflow.start_run() as older:  # trained before runs kept the reference data
        pass
    old = client.create_model_version("fin-sentiment", f"runs:/{older.info.run_id}/model", older.info.run_id, tags={"data_hash": "b2"})
    with pytest.raises(ModelError, match=r"fin-sentiment v2: its run \w+ holds no monitoring/ reference data .* promote a newer version"):
        reference(task, model, tokenizer, old, workspace)
    for name, part in (("train", rows[:30]), ("val", rows[30:]), ("test", rows[30:])):  # the workspace still holds its data
        save_records(workspace / "data" / "split" / "sentiment" / f"{name}.jsonl", part)
    save_records(workspace / "data" / "augmented" / "sentiment.jsonl", rows[:30])
    files = [workspace / "data" / "augmented" / "sentiment.jsonl"] + [workspace / "data" / "split" / "sentiment" / f"{s}.jsonl" for s in ("val", "test")]
    old = client.create_model_version("fin-sentiment", f"runs:/{older.info.run_id}/model", older.info.run_id,
                                      tags={"data_hash": tracking.files_hash(files)})
    assert reference(task, model, tokenizer, old, workspace)["labels"] == ref["labels"]


def test_the_report_gives_the_daily_index_or_shares_and_their_plots(tmp_path, sentiment):
    from pipeline.monitoring.report import REPORTS, daily_shares, summary_markdown, write_daily

    task, _, _ = sentiment
    days = {"2026-11-26": (4, Counter({"positive": 3, "negative": 1})), "2026-11-27": (2, Counter({"neutral": 2}))}
    report = {"pipeline": "sentiment", "model": "fin-sentiment", "model_version": "4", "texts": 6, "drift_detected": False, "alarm": [],
              "drift": {"label_shift": {"pvalue": 0.5, "threshold": 0.01, "distance": 0.02, "min_distance": 0.1, "drifted": False}}}
    plots = write_daily(report, days, task, "4")
    assert report["index"] == [{"date": "2026-11-26", "index": 0.5, "texts": 4}, {"date": "2026-11-27", "index": 0.0, "texts": 2}]
    assert plots == [REPORTS / "sentiment" / "index.png", REPORTS / "sentiment" / "index.html"] and all(p.exists() for p in plots)
    assert "| 2026-11-26 | +0.500 | 4 |" in summary_markdown(report) and "| label_shift: p 0.5 (threshold 0.01), mix moved 0.020 (at least 0.1) | False |" in summary_markdown(report)
    assert [sum(d["shares"].values()) for d in daily_shares(days)] == [pytest.approx(1.0), pytest.approx(1.0)]
