"""The monitoring library without a server or a flow: the prediction store (its migration, which batches
are new, what is stored and counted per day), the drift statistics on known counts, the reference of a
champion (cached per version) and the report's daily figures and plots."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import LABELS, make_rows, tiny_params, write_params, write_texts

SETTINGS = {"label_shift_pvalue": 0.01, "confidence_drop": 0.1, "oov_increase": 0.15}


def test_monitor_migrates_an_old_prediction_store_in_place(tmp_path):
    import sqlite3

    from pipeline.monitoring.store import new_batches, open_db
    from pipeline.params import MonitoringConfig

    path = tmp_path / "predictions.db"
    old = sqlite3.connect(path)  # the store as the monitor wrote it before pipelines were named
    old.execute("CREATE TABLE predictions (timestamp TEXT, text TEXT, label TEXT, score REAL, model_version TEXT, batch TEXT, scored_at TEXT)")
    old.execute("CREATE TABLE batches (name TEXT PRIMARY KEY, scored_at TEXT)")
    old.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, '1', 'day-1.csv', '2026-11-26')",
                    [("2026-11-26T09:00:00Z", "Profit rose", "positive", 0.9), ("2026-11-26T10:00:00Z", "Loss widened", "negative", 0.8)])
    old.execute("INSERT INTO batches VALUES ('day-1.csv', '2026-11-26')")
    old.commit()
    old.close()

    for _ in range(2):  # a second open finds it migrated
        db = open_db(path, "sentiment")
        assert db.execute("SELECT pipeline, label FROM predictions ORDER BY timestamp").fetchall() == [
            ("sentiment", "positive"), ("sentiment", "negative")]
        assert db.execute("SELECT pipeline, name FROM batches").fetchall() == [("sentiment", "day-1.csv")]
        db.close()

    incoming = tmp_path / "incoming"
    for batch in ("day-1.csv", "day-2.csv", "intents/day-1.csv"):
        write_texts(incoming / batch, ["some text"])
    settings = MonitoringConfig(tasks=["sentiment", "intents"], input=str(incoming))
    db = open_db(path, "sentiment")
    assert new_batches(settings, "sentiment", db) == [incoming / "day-2.csv"]  # files directly in input: the first pipeline's
    assert new_batches(settings, "intents", db) == [incoming / "intents" / "day-1.csv"]  # the same name, another pipeline


def test_a_batch_is_read_with_its_name_and_a_wrong_header_is_named(tmp_path):
    from pipeline.errors import DataError
    from pipeline.monitoring.store import read_batch

    rows = read_batch(write_texts(tmp_path / "day.csv", ["Profit rose", " ", "Loss widened"]), "day.csv")
    assert [(r["text"], r["batch"]) for r in rows] == [("Profit rose", "day.csv"), ("Loss widened", "day.csv")]  # blank text dropped
    (tmp_path / "bad.csv").write_text("time,body\n2026-11-26,Profit rose\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) text, timestamp \(expected timestamp,text\)"):
        read_batch(tmp_path / "bad.csv", "bad.csv")


def test_predictions_are_stored_once_per_batch_and_counted_per_day(tmp_path):
    from pipeline.monitoring.store import daily_counts, new_batches, open_db, store
    from pipeline.params import MonitoringConfig

    settings = MonitoringConfig(tasks=["sentiment", "ner"], input=str(tmp_path / "incoming"))
    db = open_db(tmp_path / "predictions.db", "sentiment")
    rows = [{"timestamp": f"2026-11-2{6 + i % 2}T09:00:00Z", "text": f"text {i}", "batch": "day.csv"} for i in range(4)]
    labels = [{"label": label, "score": 0.9} for label in ("positive", "negative", "positive", "neutral")]
    store(db, "sentiment", rows, labels, "3", ["sentiment/day.csv"])  # a batch is named by its path under monitoring.input
    entities = [{"entities": [{"type": "ORG"}, {"type": "PER"}], "score": 0.8}, {"entities": [], "score": 0.7}]
    store(db, "ner", rows[:2], entities, "1", ["ner/day.csv"])

    assert daily_counts(db, "sentiment", tagger=False) == {
        "2026-11-26": (2, Counter({"positive": 2})), "2026-11-27": (2, Counter({"negative": 1, "neutral": 1}))}
    assert daily_counts(db, "ner", tagger=True) == {"2026-11-26": (1, Counter({"ORG": 1, "PER": 1})), "2026-11-27": (1, Counter())}
    write_texts(tmp_path / "incoming" / "sentiment" / "day.csv", ["text"])
    assert new_batches(settings, "sentiment", db) == []  # scored already: never counted twice by a later run


def test_the_chi_square_oov_and_confidence_figures_on_known_inputs():
    from pipeline.monitoring.drift import label_shift_pvalue, measure_drift, oov_rate
    from pipeline.params import MonitoringConfig

    assert oov_rate(["Profit rose 5%", "profit fell"], {"profit", "rose"}) == pytest.approx(1 / 4)  # digits are not words
    assert label_shift_pvalue({"positive": 50, "negative": 50}, {"positive": 50, "negative": 50}) == pytest.approx(1.0)
    assert label_shift_pvalue({"positive": 50, "negative": 50}, {"positive": 95, "negative": 5}) < 1e-6
    assert label_shift_pvalue({"positive": 10}, {"positive": 3}) == 1.0 and label_shift_pvalue({"ORG": 3}, {}) == 1.0

    ref = {"labels": {"positive": 50, "negative": 50}, "mean_confidence": 0.9, "oov_rate": 0.05, "vocabulary": ["profit", "rose"]}
    same = [{"label": label, "score": 0.88} for label in ["positive", "negative"] * 50]
    drift = measure_drift(ref, ["profit rose"] * 100, same, MonitoringConfig(**SETTINGS), "label_shift")
    assert not any(figure["drifted"] for figure in drift.values())
    unsure = [{"label": "positive", "score": 0.5}] * 100
    drift = measure_drift(ref, ["stir the soup"] * 100, unsure, MonitoringConfig(**SETTINGS), "label_shift")
    assert drift["label_shift"]["drifted"] and drift["oov_rate"]["increase"] == pytest.approx(0.95)
    assert drift["confidence"]["drop"] == pytest.approx(0.4) and drift["confidence"]["drifted"]


@pytest.fixture
def sentiment(tmp_path, monkeypatch, tiny_model):
    """The sentiment task of tiny params, with the tiny random model (cwd: a temp folder)."""
    from pipeline.tasks import get_task, load_params

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(tiny_model))
    task = get_task("sentiment", load_params().task("sentiment"))
    return task, *task.load_model(str(tiny_model))


def test_the_reference_comes_from_the_outputs_given_and_is_cached_per_version(tmp_path, sentiment):
    from pipeline.monitoring.reference import REFERENCES, reference
    from pipeline.records import save_records

    task, model, tokenizer = sentiment
    outputs = tmp_path / "workspace"
    rows = [{"text": r["text"], "label": r["label"]} for r in make_rows(40)]
    for name, part in (("train", rows[:30]), ("val", rows[30:]), ("test", rows[30:])):
        save_records(outputs / "data" / "split" / "sentiment" / f"{name}.jsonl", part)
    save_records(outputs / "data" / "augmented" / "sentiment.jsonl", rows[:30])

    ref = reference(task, model, tokenizer, "4", outputs)
    assert sum(ref["labels"].values()) == 10 and set(ref["labels"]) <= set(LABELS) and 0 < ref["mean_confidence"] <= 1
    assert set(ref["vocabulary"]) == {w for r in rows[:30] for w in r["text"].lower().rstrip(".").split()}
    assert (REFERENCES / "sentiment-v4.json").exists()
    (outputs / "data" / "split" / "sentiment" / "val.jsonl").unlink()
    assert reference(task, model, tokenizer, "4", outputs) == ref  # read from the cache, the splits no longer needed


def test_the_report_gives_the_daily_index_or_shares_and_their_plots(tmp_path, sentiment):
    from pipeline.monitoring.report import REPORTS, daily_shares, summary_markdown, write_daily

    task, _, _ = sentiment
    days = {"2026-11-26": (4, Counter({"positive": 3, "negative": 1})), "2026-11-27": (2, Counter({"neutral": 2}))}
    report = {"pipeline": "sentiment", "model": "fin-sentiment", "model_version": "4", "texts": 6, "drift_detected": False,
              "drift": {"label_shift": {"pvalue": 0.5, "threshold": 0.01, "drifted": False}}}
    plots = write_daily(report, days, task, "4")
    assert report["index"] == [{"date": "2026-11-26", "index": 0.5, "texts": 4}, {"date": "2026-11-27", "index": 0.0, "texts": 2}]
    assert plots == [REPORTS / "sentiment" / "index.png", REPORTS / "sentiment" / "index.html"] and all(p.exists() for p in plots)
    assert "| 2026-11-26 | +0.500 | 4 |" in summary_markdown(report) and "| label_shift | 0.5000 | 0.01 | False |" in summary_markdown(report)
    assert [sum(d["shares"].values()) for d in daily_shares(days)] == [pytest.approx(1.0), pytest.approx(1.0)]
