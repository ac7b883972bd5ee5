"""Prefect flows with real components: a temporary Prefect server for the session, the retrain
flow of each pipeline end to end in a temp git + DVC repo, the deployments' schedules and triggers
(a batch starts its own pipeline's retrain), and the monitor on in-distribution and clearly shifted
text, per pipeline (sentiment, intents, NER)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from flows.workspaces import WORKSPACES
from tests.conftest import (
    INTENT_VOCAB,
    committed_project,
    make_intent_rows,
    make_rows,
    tiny_params,
    write_csv,
    write_params,
    write_texts,
)
from tests.ner_data import NAMES, make_sentences, ner_params, write_conll

pytestmark = pytest.mark.e2e

SHIFTED = [  # another domain and style: recipes, sports chat, weather
    "Preheat the oven and whisk the eggs with sugar until fluffy",
    "lol that striker missed an open goal again, unbelievable scenes",
    "Heavy thunderstorms expected tonight across the northern valleys",
    "Add a pinch of saffron to the simmering broth and stir gently",
    "omg the referee totally ignored that handball, robbed!!",
    "Fold the whipped cream into the chocolate mousse before chilling",
    "Tomorrow brings sunny spells with a gentle breeze from the coast",
    "Our goalkeeper pulled off three incredible saves in extra time",
]


def monitored_params(tiny_model: Path) -> dict:
    """Sentiment and intents (retrained by the flow), and NER (outside `pipelines`, trained by `champions`), all monitored."""
    params = tiny_params(tiny_model)
    intents = {**params["sentiment"], "type": "text_classification", "registry": {"name": "support-intents"},
               "data": {"source": "data/intents.csv", "incoming": "data/incoming/intents"},
               "validate": {**params["sentiment"]["validate"], "labels": list(INTENT_VOCAB)}, "augment": {"copies": 0}}
    ner = ner_params(tiny_model)["ner"]
    return {**params, "pipelines": ["sentiment", "intents"], "intents": intents, "ner": ner,
            "monitoring": {"pipelines": ["sentiment", "intents", "ner"], "entities": {
                "tagger": "ner", "types": ["ORG"],
                "alert": {"min_mentions": 1, "margin": 0.0, "pvalue": 1.0}}}}  # any entity as negative as before or more: an alert


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model, prefect_server) -> Path:
    """A temp git + DVC repo with tiny data and params, as the working directory for the module."""
    path = tmp_path_factory.mktemp("flows-repo")
    write_csv(path / "data" / "sample.csv", make_rows(300))
    write_csv(path / "data" / "intents.csv", make_intent_rows(240))
    write_conll(path / "data" / "ner.conll", make_sentences(250))
    write_params(path, monitored_params(tiny_model))
    committed_project(path, ignored=("/mlflow/", "/monitoring/"))
    before = Path.cwd()
    os.chdir(path)
    yield path
    os.chdir(before)


def champion(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    return mlflow.MlflowClient().get_model_version_by_alias("fin-sentiment", "champion")


def retrain_limit(pipeline: str, new_limit: int | None = None):
    """The pipeline's global concurrency limit on the Prefect server (changed first, as an operator would, when asked)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        if new_limit is not None:
            client.update_global_concurrency_limit(f"finetune-retrain-{pipeline}", GlobalConcurrencyLimitUpdate(limit=new_limit))
        return client.read_global_concurrency_limit_by_name(f"finetune-retrain-{pipeline}")


def test_retrain_flow_registers_a_champion_and_publishes_an_artifact(repo):
    from prefect.artifacts import Artifact

    from flows.retrain import retrain

    decisions = retrain(pipeline="sentiment")
    assert list(decisions) == ["sentiment"] and decisions["sentiment"]["alias"] == "champion"
    assert (repo / WORKSPACES / "sentiment" / "models" / "sentiment").is_dir()  # trained in the pipeline's own workspace
    assert not (repo / WORKSPACES / "intents").exists() and not (repo / "models").exists()  # the rest is left alone
    assert str(champion(repo).version) == "1"
    artifact = Artifact.get("retrain-sentiment")
    assert artifact is not None
    assert "fin-sentiment v1 -> @champion" in artifact.data and "val | f1_macro" in artifact.data
    assert "#/experiments/" in artifact.data
    limit = retrain_limit("sentiment")  # created by the run, with one slot, free again
    assert (limit.limit, limit.active_slots) == (1, 0)
    retrain_limit("sentiment", new_limit=2)  # an operator's change, which the next run must keep


def stored_events(name: str, at_least: int = 1) -> list[dict]:
    """The payloads of the events called `name` stored on the Prefect server (stored asynchronously: waits for `at_least`)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        for _ in range(40):
            page = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50)
            if len(page.events) >= at_least:
                break
            time.sleep(0.5)
    return [dict(e.payload) for e in page.events]


def test_a_new_batch_is_trained_on_and_an_unreadable_one_set_aside(repo):
    from prefect.artifacts import Artifact

    from flows.retrain import retrain
    from pipeline.records import load_json, load_records

    write_csv(repo / "data" / "incoming" / "batch-001.csv", make_rows(360, seed=5)[300:])
    (repo / "data" / "incoming" / "batch-002.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # a screenshot dropped by mistake
    decision = retrain(pipeline="sentiment")["sentiment"]
    assert (retrain_limit("sentiment").limit, retrain_limit("sentiment").active_slots) == (2, 0)
    assert decision["challenger"]["version"] == "2"  # trained, registered and judged despite the bad batch
    low, high = decision["test"]["interval"]  # a champion to test against this time: the artifact shows the test
    assert f"| paired_bootstrap | {decision['delta']:+.4f} | 95%: [{low:+.4f}, {high:+.4f}] |" in Artifact.get("retrain-sentiment").data
    workspace = repo / WORKSPACES / "sentiment"  # the batches dropped here are read there
    provenance = load_json(workspace / "data" / "raw" / "sentiment.provenance.json")
    assert "data/incoming/batch-001.csv" in provenance["files"]
    assert [b["file"] for b in provenance["rejected_batches"]] == ["data/incoming/batch-002.csv"]
    train = load_records(workspace / "data" / "split" / "sentiment" / "train.jsonl")
    assert any(row.get("batch") == "batch-001.csv" for row in train)
    recorded = load_records(workspace / "data" / "quarantine" / "sentiment.batches.jsonl")
    assert [(r["file"], r["reason"]) for r in recorded] == [("data/incoming/batch-002.csv", "this is a PNG image, not a text data file")]
    assert "## Batches set aside (1)" in Artifact.get("retrain-sentiment").data
    from flows.events import BATCH_REJECTED

    events = stored_events(BATCH_REJECTED)
    assert [(e["pipeline"], e["file"], e["reason"]) for e in events] == [
        ("sentiment", "data/incoming/batch-002.csv", "this is a PNG image, not a text data file")]
    (repo / "data" / "incoming" / "batch-002.csv").unlink()  # the next tests start from good data


def test_deployment_has_nightly_schedule_and_event_triggers(repo):
    from prefect.client.orchestration import get_client

    from flows.deploy import build_deployments
    from pipeline.tasks import load_params

    *retrains, monitor_sentiment, monitor_intents, monitor_ner = build_deployments(load_params())
    assert [(r.name, r.parameters) for r in retrains] == [
        ("retrain-sentiment", {"pipeline": "sentiment"}), ("retrain-intents", {"pipeline": "intents"})]
    monitors = [monitor_sentiment, monitor_intents, monitor_ner]
    assert [(m.name, m.parameters) for m in monitors] == [
        ("monitor-sentiment", {"pipeline": "sentiment"}), ("monitor-intents", {"pipeline": "intents"}), ("monitor-ner", {"pipeline": "ner"})]
    assert all([s.schedule.cron for s in m.schedules] == ["0 * * * *"] for m in monitors)

    for deployment in retrains:  # stored on the server: what a restarted `finetune deploy` finds again
        deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("retrain/retrain-intents")
    assert [s.schedule.cron for s in stored.schedules] == ["0 2 * * *"] and stored.parameters == {"pipeline": "intents"}


def test_monitor_no_drift_in_distribution_then_drift_on_shifted_text(repo):
    import sqlite3

    from flows.monitor import monitor

    texts = [r["text"] for r in make_rows(460, seed=9)[380:]]
    report = monitor(str(write_texts(repo / "incoming" / "same.csv", texts)))
    assert report["drift_detected"] is False, report["drift"]
    assert (repo / "reports" / "monitor" / "sentiment" / "index.png").exists()
    assert "<svg" in (repo / "reports" / "monitor" / "sentiment" / "index.html").read_text()
    assert [d["date"] for d in report["index"]] == ["2026-11-26", "2026-11-27"]
    assert not (repo / "data" / "to_label").exists()

    report = monitor(str(write_texts(repo / "incoming" / "shifted.csv", SHIFTED * 5, days=("2026-11-28",))))
    assert report["drift_detected"] is True
    assert report["drift"]["oov_rate"]["drifted"] and any(why.startswith("oov_rate: increase") for why in report["alarm"])
    with open(report["labelling_queue"], newline="", encoding="utf-8") as f:
        queue = list(csv.DictReader(f))
    assert len(queue) == len(SHIFTED) and {"text", "predicted_label", "confidence", "uncertainty"} <= set(queue[0])  # each text once
    assert float(queue[0]["uncertainty"]) >= float(queue[-1]["uncertainty"])  # most uncertain first
    db = sqlite3.connect(repo / "monitoring" / "predictions.db")
    query = "SELECT count(*), count(DISTINCT model_version) FROM predictions WHERE pipeline = 'sentiment'"
    assert db.execute(query).fetchone() == (len(texts) + 40, 1)


@pytest.fixture(scope="module")
def champions(repo) -> None:
    """Champions of the intents pipeline (its own retrain) and NER (outside `pipelines`: its stages run directly)."""
    from flows.retrain import retrain
    from pipeline.stages import STAGES, run_stage

    assert list(retrain(pipeline="intents")) == ["intents"]
    for stage in STAGES:
        run_stage(stage, "ner", Path("params.yaml"))


def test_monitor_per_pipeline_own_batches_report_and_label_shares(repo, champions):
    import sqlite3

    from flows.monitor import monitor

    sentiment_report = repo / "reports" / "monitor" / "sentiment.json"
    before = sentiment_report.read_bytes() if sentiment_report.exists() else None
    write_texts(repo / "monitoring" / "incoming" / "intents" / "day-1.csv", [r["text"] for r in make_intent_rows(90, seed=4)[30:]])
    assert monitor() == {}  # sentiment's monitor: the intents' folder is not its drop folder
    report = monitor(pipeline="intents")
    assert report["pipeline"] == "intents" and report["model"] == "support-intents" and report["texts"] == 60
    assert set(report["drift"]) == {"label_shift", "confidence", "oov_rate"}
    assert set(report["drift"]["label_shift"]["current"]) <= set(INTENT_VOCAB)
    assert "index" not in report and [d["date"] for d in report["shares"]] == ["2026-11-26", "2026-11-27"]
    assert abs(sum(report["shares"][0]["shares"].values()) - 1) < 1e-9
    assert (repo / "reports" / "monitor" / "intents.json").exists()
    assert (repo / "reports" / "monitor" / "intents" / "shares.png").exists()
    assert (sentiment_report.read_bytes() if sentiment_report.exists() else None) == before
    assert monitor(pipeline="intents") == {}  # each batch is scored once
    db = sqlite3.connect(repo / "monitoring" / "predictions.db")
    assert db.execute("SELECT count(*) FROM predictions WHERE pipeline = 'intents'").fetchone() == (60,)
    assert db.execute("SELECT pipeline, name FROM batches WHERE pipeline = 'intents'").fetchall() == [("intents", "intents/day-1.csv")]


def test_two_monitor_runs_at_once_score_each_batch_once(repo, champions):
    import sqlite3
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    for i, day in enumerate(("day-2", "day-3")):
        write_texts(repo / "monitoring" / "incoming" / "intents" / f"{day}.csv", [r["text"] for r in make_intent_rows(40, seed=5 + i)])
    db = sqlite3.connect(repo / "monitoring" / "predictions.db")
    query = "SELECT count(*), count(DISTINCT batch || '#' || position) FROM predictions WHERE pipeline = 'intents'"
    before, _ = db.execute(query).fetchone()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test's Prefect server
    runs = [subprocess.Popen([sys.executable, "-m", "flows.monitor", "--pipeline", "intents"], cwd=repo, env=env,  # the scheduled one and one by hand
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("monitor[intents]: waiting for the lock" in output for output in outputs)
    assert sum("80 texts of 2 batch(es) scored by support-intents" in output for output in outputs) == 1, outputs  # the other: none new
    assert db.execute(query).fetchone() == (before + 80, before + 80)


def test_the_monitor_checks_served_answers_once_beside_drop_folder_batches(repo, champions):
    import mlflow

    from flows.monitor import monitor
    from pipeline.monitoring.served import PredictionLog
    from pipeline.registry import champion_uri, load_registered, registered_version
    from pipeline.tasks import get_task, load_params

    params = load_params()
    task = get_task("intents", params.pipeline("intents"))
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    version = str(registered_version(champion_uri("support-intents")).version)
    model, tokenizer = load_registered(task, f"models:/support-intents/{version}")
    texts = [r["text"] for r in make_intent_rows(50, seed=11)]
    answers = [task.observation(p) for p in task.predict(model, tokenizer, [{"text": text} for text in texts])]  # as `finetune serve` offers them
    log = PredictionLog(params.monitoring.db, "sentiment", ["intents"], share=1.0, capacity=100)
    log.start()
    for start in range(0, 50, 10):
        log.offer("intents", version, texts[start : start + 10], answers[start : start + 10])
    log.offer("intents", "0", ["Where is my card?"], [{"counted": ["card_lost_or_stolen"], "score": 0.5}])  # another version's
    log.stop()
    write_texts(repo / "monitoring" / "incoming" / "intents" / "day-4.csv", [r["text"] for r in make_intent_rows(20, seed=12)])

    report = monitor(pipeline="intents")
    assert (report["texts"], report["served_texts"], report["served_batches"]) == (70, 50, 1)
    assert monitor(pipeline="intents") == {}  # each served answer is checked once


def test_ner_monitor_reports_the_entity_type_mix_and_confidence(repo, champions):
    import sqlite3

    from flows.monitor import monitor

    sentences = [" ".join(tokens) for tokens, _ in make_sentences(300, seed=3)[250:]]
    report = monitor(str(write_texts(repo / "incoming" / "ner.csv", sentences)), pipeline="ner")
    mix, confidence = report["drift"]["entity_types"], report["drift"]["confidence"]
    assert set(mix["reference"]) | set(mix["current"]) <= {"PER", "ORG", "LOC", "MISC"} and 0 <= mix["pvalue"] <= 1
    assert sum(mix["current"].values()) > 0
    assert 0 < confidence["current"] <= 1 and confidence["drop"] == pytest.approx(confidence["reference"] - confidence["current"])
    assert (repo / "reports" / "monitor" / "ner" / "shares.png").exists() and report["shares"][0]["counted"] > 0
    db = sqlite3.connect(repo / "monitoring" / "predictions.db")
    labels = [label for (label,) in db.execute("SELECT label FROM predictions WHERE pipeline = 'ner'")]
    assert len(labels) == 50 and {kind for label in labels for kind in label.split()} == set(mix["current"])

    report = monitor(str(write_texts(repo / "incoming" / "ner-shifted.csv", SHIFTED * 5)), pipeline="ner")
    assert report["drift_detected"] and report["drift"]["oov_rate"]["drifted"]
    with open(report["labelling_queue"], newline="", encoding="utf-8") as f:
        queue = list(csv.DictReader(f))
    assert len(queue) == len(SHIFTED) and float(queue[0]["confidence"]) <= float(queue[-1]["confidence"])  # least sure first


def test_the_sentiment_monitor_stores_the_ner_champions_organisations_beside_each_label(repo, champions, capsys):
    import sqlite3
    import time

    import mlflow
    from prefect.artifacts import Artifact

    from flows.events import SENTIMENT_ALERT
    from flows.monitor import monitor
    from pipeline.monitoring.entities import entity_name, mentions
    from pipeline.monitoring.served import PredictionLog
    from pipeline.registry import champion_uri, load_registered, registered_version
    from pipeline.tasks import get_task, load_params

    params = load_params()
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    ner, version = get_task("ner", params.pipeline("ner")), str(registered_version(champion_uri("ner")).version)
    sentiment = str(registered_version(champion_uri("fin-sentiment")).version)
    texts = [" ".join(tokens) for tokens, _ in make_sentences(40, seed=21)]
    log = PredictionLog(params.monitoring.db, "sentiment", ["sentiment"], share=1.0, capacity=10)  # as `finetune serve` logs
    log.start()
    log.offer("sentiment", sentiment, texts[30:], [{"counted": ["negative"], "score": 0.9}] * 10)
    log.stop()
    write_texts(repo / "monitoring" / "incoming" / "sentiment" / "companies.csv", texts[:30])
    report = monitor()

    db = sqlite3.connect(repo / "monitoring" / "predictions.db")
    scored = db.execute("SELECT count(*) FROM batches WHERE pipeline = 'sentiment' AND scored_at IS NOT NULL").fetchone()[0]
    tagged = db.execute("SELECT tagger, model_version, count(*) FROM tagged_batches WHERE pipeline = 'sentiment' GROUP BY 1, 2").fetchall()
    assert scored >= 2 and tagged == [("ner", version, scored)]  # batches scored before NER had a champion too, and the served one
    model, tokenizer = load_registered(ner, f"models:/ner/{version}")
    expected = [sorted(mentions(p, ["ORG"])) for p in ner.predict(model, tokenizer, [{"text": text} for text in texts])]
    query = ("SELECT p.text, m.entity FROM mentions m JOIN predictions p USING (pipeline, batch, position) "
             "WHERE m.pipeline = 'sentiment' AND m.model_version = ?")
    found = {text: [] for text in texts}
    for text, entity in db.execute(query, (version,)):
        found[text].append(entity)
    assert [sorted(found[text]) for text in texts] == expected and any(expected)
    top = report["entities"]["top"]
    assert {row["entity"] for row in top} <= {entity_name(" ".join(name)) for name in NAMES["ORG"]}  # 'Halden Shipping', no ASA
    newest = db.execute("SELECT max(substr(timestamp, 1, 10)) FROM predictions WHERE pipeline = 'sentiment'").fetchone()[0]
    assert all(row["window"][1] == newest and -1 <= row["index"] <= 1 for row in top)  # the last 7 days: the served answers' today
    assert "The most mentioned entities, last 7 days" in Artifact.get("monitor-sentiment").data
    desk = (repo / report["desk"]).read_text(encoding="utf-8")  # the page, with the versions behind its figures
    assert report["desk"] == "reports/monitor/sentiment/desk.html" and f"fin-sentiment v{sentiment}" in desk and f"ner v{version}" in desk
    today = [alert for alert in report["alerts"] if alert["window"] == [newest, newest]]
    assert today and all(alert["negative"] == alert["texts"] and alert["examples"] for alert in today)  # the served answers: all negative
    events = [e for e in stored_events(SENTIMENT_ALERT, at_least=len(report["alerts"])) if e["window"] == [newest, newest]]
    assert sorted(e["entity"] for e in events) == sorted(alert["entity"] for alert in today)
    before = db.execute("SELECT count(*) FROM mentions").fetchone()
    assert monitor() == {} and monitor(str(repo / "monitoring" / "incoming" / "sentiment" / "companies.csv"))  # nothing new; the file by hand
    assert db.execute("SELECT count(*) FROM mentions").fetchone() == before  # stored and tagged once
    time.sleep(2)  # events are stored asynchronously
    assert len([e for e in stored_events(SENTIMENT_ALERT) if e["window"] == [newest, newest]]) == len(events)  # each alert sent once


def test_predict_and_select_work_for_every_pipeline(repo, champions, capsys):
    from pipeline.cli import main

    capsys.readouterr()
    assert main(["predict", "--pipeline", "intents", "I lost my card, please block it"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in INTENT_VOCAB
    text = "Maria Rossi joined Kestrel Motors in Milan ."
    assert main(["predict", "--pipeline", "ner", text]) == 0
    assert capsys.readouterr().out.splitlines()[0] == text
    pool = write_csv(repo / "pool.csv", [{"text": " ".join(tokens)} for tokens, _ in make_sentences(20, seed=8)], ("text",))
    for name in ("intents", "ner"):  # a csv pool with a text column, for NER too (its data column holds tokens)
        assert main(["select", "--pipeline", name, "--pool", str(pool), "--k", "3"]) == 0
        assert f"select[{name}]: 3 of 20 pool texts written to data/to_label/{name}-" in capsys.readouterr().out


def triggered_runs(deployments: list[str], trigger: str, expected: int) -> dict[str, list]:
    """The flow runs the deployments' triggers named `trigger ...` created (automations act asynchronously), by deployment."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        for _ in range(60):
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=deployments)))
            by_automation = [run for run in runs if run.created_by and run.created_by.type == "AUTOMATION"
                             and run.created_by.display_value.startswith(trigger)]
            if len(by_automation) >= expected:
                break
            time.sleep(0.5)
        names = {client.read_deployment(run.deployment_id).name: [] for run in by_automation}
        for run in by_automation:
            names[client.read_deployment(run.deployment_id).name].append(run)
    return names


def test_batches_dropped_together_start_one_retrain_of_their_own_pipeline(repo, tmp_path):
    import threading
    import time

    from flows.deploy import DropFolder, build_deployments, watch_drop_folders
    from pipeline.tasks import load_params

    for deployment in build_deployments(load_params())[:2]:  # retrain-sentiment and retrain-intents, triggers included
        deployment.apply()
    sentiment, intents = tmp_path / "incoming", tmp_path / "incoming" / "intents"
    write_csv(sentiment / "old.csv", make_rows(5))  # there before the watcher: not new
    stop = threading.Event()
    watcher = threading.Thread(target=watch_drop_folders, args=(
        [DropFolder("sentiment", sentiment), DropFolder("intents", intents)], 0.1, 2.0, stop))
    watcher.start()
    for i in range(5):  # five sentiment batches within the settle window, one for intents
        write_csv(sentiment / f"batch-{i}.csv", make_rows(5, seed=i + 1))
        time.sleep(0.2)
    write_csv(intents / "day-1.csv", make_intent_rows(5))
    time.sleep(3)
    stop.set()
    watcher.join()

    runs = triggered_runs(["retrain-sentiment", "retrain-intents"], "new labelled batch", expected=2)
    assert sorted(runs) == ["retrain-intents", "retrain-sentiment"]
    assert [run.parameters for run in runs["retrain-sentiment"]] == [{"pipeline": "sentiment"}]  # one run, not five
    assert [run.parameters for run in runs["retrain-intents"]] == [{"pipeline": "intents"}]
