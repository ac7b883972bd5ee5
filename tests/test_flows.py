"""Prefect flows with real components: a temporary Prefect server for the session, the retrain
flow end to end in a temp git + DVC repo, the deployment's schedule and triggers, and the
monitor on in-distribution and clearly shifted text."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

from tests.conftest import ROOT, make_rows, tiny_params, write_csv, write_params  # noqa: E402

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


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model, prefect_server) -> Path:
    """A temp git + DVC repo with tiny data and params, as the working directory for the module."""
    path = tmp_path_factory.mktemp("flows-repo")
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    write_csv(path / "data" / "sample.csv", make_rows(300))
    write_params(path, tiny_params(tiny_model))
    (path / ".gitignore").write_text("/mlflow/\n/monitoring/\n")
    git("init", "-q", cwd=path)
    subprocess.run([Path(sys.executable).parent / "dvc", "init", "-q"], cwd=path, check=True)
    git("add", "-A", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=path)
    before = Path.cwd()
    os.chdir(path)
    yield path
    os.chdir(before)


def champion(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    return mlflow.MlflowClient().get_model_version_by_alias("fin-sentiment", "champion")


def test_retrain_flow_registers_a_champion_and_publishes_an_artifact(repo):
    from prefect.artifacts import Artifact

    from flows.retrain import retrain

    decisions = retrain()
    assert decisions["sentiment"]["alias"] == "champion"
    assert str(champion(repo).version) == "1"
    artifact = Artifact.get("retrain-sentiment")
    assert artifact is not None
    assert "fin-sentiment v1 -> @champion" in artifact.data and "val | f1_macro" in artifact.data
    assert "#/experiments/" in artifact.data


def rejected_batch_events() -> list[dict]:
    """The payloads of the BATCH_REJECTED events stored on the Prefect server (stored asynchronously)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from flows.events import BATCH_REJECTED

    with get_client(sync_client=True) as client:
        for _ in range(40):
            page = client.read_events(EventFilter(event=EventNameFilter(name=[BATCH_REJECTED])), limit=50)
            if page.events:
                return [dict(e.payload) for e in page.events]
            time.sleep(0.5)
    return []


def test_a_new_batch_is_trained_on_and_an_unreadable_one_set_aside(repo):
    from prefect.artifacts import Artifact

    from flows.retrain import retrain
    from pipeline.records import load_json, load_records

    write_csv(repo / "data" / "incoming" / "batch-001.csv", make_rows(360, seed=5)[300:])
    (repo / "data" / "incoming" / "batch-002.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # a screenshot dropped by mistake
    decision = retrain()["sentiment"]
    assert decision["challenger"]["version"] == "2"  # trained, registered and judged despite the bad batch
    low, high = decision["test"]["interval"]  # a champion to test against this time: the artifact shows the test
    assert f"| paired_bootstrap | {decision['delta']:+.4f} | 95%: [{low:+.4f}, {high:+.4f}] |" in Artifact.get("retrain-sentiment").data
    provenance = load_json(repo / "data" / "raw" / "sentiment.provenance.json")
    assert "data/incoming/batch-001.csv" in provenance["files"]
    assert [b["file"] for b in provenance["rejected_batches"]] == ["data/incoming/batch-002.csv"]
    train = load_records(repo / "data" / "split" / "sentiment" / "train.jsonl")
    assert any(row.get("batch") == "batch-001.csv" for row in train)
    recorded = load_records(repo / "data" / "quarantine" / "sentiment.batches.jsonl")
    assert [(r["file"], r["reason"]) for r in recorded] == [("data/incoming/batch-002.csv", "this is a PNG image, not a text data file")]
    assert "## Batches set aside (1)" in Artifact.get("retrain-sentiment").data
    events = rejected_batch_events()
    assert [(e["task"], e["file"], e["reason"]) for e in events] == [
        ("sentiment", "data/incoming/batch-002.csv", "this is a PNG image, not a text data file")]
    (repo / "data" / "incoming" / "batch-002.csv").unlink()  # the next tests start from good data


def test_deployment_has_nightly_schedule_and_event_triggers(repo):
    from prefect.client.orchestration import get_client

    from flows.deploy import build_deployments
    from flows.events import BATCH_ARRIVED, DRIFT_DETECTED, workspace_resource
    from pipeline.tasks import load_params

    retrain, monitor = build_deployments(load_params())
    assert [s.schedule.cron for s in retrain.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in monitor.schedules] == ["0 * * * *"]
    assert [set(t.expect) for t in retrain.triggers] == [{BATCH_ARRIVED}, {DRIFT_DETECTED}]
    resource = workspace_resource()["prefect.resource.id"]
    assert all(t.match.model_dump()["prefect.resource.id"] == resource for t in retrain.triggers)

    retrain.apply()  # stored on the server: what a restarted `finetune deploy` finds again
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("retrain/retrain")
    assert [s.schedule.cron for s in stored.schedules] == ["0 2 * * *"]


def write_texts(path: Path, texts: list[str], days: tuple[str, ...] = ("2026-11-26", "2026-11-27")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "text"])
        writer.writerows([f"{days[i % len(days)]}T09:00:00Z", text] for i, text in enumerate(texts))
    return path


def test_monitor_no_drift_in_distribution_then_drift_on_shifted_text(repo):
    import sqlite3

    from flows.monitor import monitor

    texts = [r["text"] for r in make_rows(460, seed=9)[380:]]
    report = monitor(str(write_texts(repo / "incoming" / "same.csv", texts)))
    assert report["drift_detected"] is False, report["drift"]
    assert (repo / "reports" / "monitor" / "index.png").exists()
    assert "<svg" in (repo / "reports" / "monitor" / "index.html").read_text()
    assert [d["date"] for d in report["index"]] == ["2026-11-26", "2026-11-27"]
    assert not (repo / "data" / "to_label").exists()

    report = monitor(str(write_texts(repo / "incoming" / "shifted.csv", SHIFTED * 5, days=("2026-11-28",))))
    assert report["drift_detected"] is True
    assert report["drift"]["oov_rate"]["drifted"]
    with open(report["labelling_queue"], newline="", encoding="utf-8") as f:
        queue = list(csv.DictReader(f))
    assert len(queue) == 40 and {"text", "predicted_label", "confidence", "uncertainty"} <= set(queue[0])
    assert float(queue[0]["uncertainty"]) >= float(queue[-1]["uncertainty"])  # most uncertain first
    db = sqlite3.connect(repo / "monitoring" / "predictions.db")
    assert db.execute("SELECT count(*), count(DISTINCT model_version) FROM predictions").fetchone() == (len(texts) + 40, 1)


def test_a_new_batch_in_the_drop_folder_emits_the_trigger_event(tmp_path, prefect_server):
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from flows.deploy import watch_drop_folder
    from flows.events import BATCH_ARRIVED

    folder = tmp_path / "incoming"
    write_csv(folder / "old.csv", make_rows(5))
    write_csv(folder / "fixed.csv", make_rows(5, seed=2))
    (folder / "README.md").write_text("not a batch")
    stop = threading.Event()
    watcher = threading.Thread(target=watch_drop_folder, args=(folder, 0.1, stop))
    watcher.start()
    time.sleep(0.5)  # let the watcher take stock of what is already there
    write_csv(folder / "new.csv", make_rows(5, seed=1))
    time.sleep(1)
    write_csv(folder / "fixed.csv", make_rows(6, seed=3))  # a corrected copy dropped again under its name
    time.sleep(1)
    stop.set()
    watcher.join()

    files = []
    with get_client(sync_client=True) as client:
        for _ in range(40):  # events are stored asynchronously
            page = client.read_events(EventFilter(event=EventNameFilter(name=[BATCH_ARRIVED])), limit=50)
            files = [e.payload["file"] for e in page.events]
            if len(files) == 2:
                break
            time.sleep(0.5)
    assert sorted(files) == [str(folder / "fixed.csv"), str(folder / "new.csv")]
