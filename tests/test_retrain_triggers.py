"""What starts a retrain, without a server: each pipeline's drop folder and its settle window, one retrain
deployment per pipeline with triggers about that pipeline only, and the pipeline a retrain may name; and
what stops one before it starts: a Prefect server or a tracking store that does not answer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import make_intent_rows, make_rows, tiny_params, write_csv, write_params

SETTLE = 60.0


def test_batches_within_the_settle_window_make_one_arrival(tmp_path):
    from flows.deploy import DropFolder

    folder = tmp_path / "incoming"
    write_csv(folder / "old.csv", make_rows(5))
    (folder / "README.md").write_text("not a batch")
    drop = DropFolder("sentiment", folder)  # what is there at start is not new
    assert drop.poll(0.0, SETTLE) == []
    for i in range(5):  # five files, dropped over 40 s
        write_csv(folder / f"batch-{i}.csv", make_rows(5, seed=i + 1))
        assert drop.poll(10.0 * i, SETTLE) == []
    assert drop.poll(59.0, SETTLE) == []  # the window opened at 0 s is still open
    assert drop.poll(60.0, SETTLE) == [str(folder / f"batch-{i}.csv") for i in range(5)]
    assert drop.poll(200.0, SETTLE) == []  # each arrival once

    write_csv(folder / "old.csv", make_rows(6, seed=9))  # a corrected copy dropped again under its name
    assert drop.poll(300.0, SETTLE) == []
    assert drop.poll(360.0, SETTLE) == [str(folder / "old.csv")]


def test_a_folder_made_after_the_watcher_started_is_watched(tmp_path):
    from flows.deploy import DropFolder

    drop = DropFolder("intents", tmp_path / "incoming" / "intents")
    assert drop.poll(0.0, 0.0) == []
    write_csv(tmp_path / "incoming" / "intents" / "day-1.csv", make_intent_rows(5))
    assert drop.poll(1.0, 0.0) == [str(tmp_path / "incoming" / "intents" / "day-1.csv")]  # no settle window: at once


@pytest.fixture
def two_pipelines(tmp_path, monkeypatch, tiny_model):
    """params.yaml with sentiment (data.incoming by default) and intents (its own data.incoming) in `pipelines`."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tiny_model)
    params["intents"] = {**params["sentiment"], "type": "text_classification", "registry": {"name": "support-intents"},
                         "data": {"source": "data/intents.csv", "incoming": "data/incoming/intents"}}
    write_params(tmp_path, {**params, "pipelines": ["sentiment", "intents"]})
    from pipeline.tasks import load_params

    return load_params()


def test_each_pipeline_has_its_retrain_deployment_and_drop_folder(two_pipelines):
    from flows.deploy import build_deployments, drop_folders
    from flows.events import BATCH_ARRIVED, DRIFT_DETECTED, PIPELINE_LABEL, scope_id

    retrain_sentiment, retrain_intents, *monitors = build_deployments(two_pipelines)
    for deployment, pipeline in ((retrain_sentiment, "sentiment"), (retrain_intents, "intents")):
        assert deployment.name == f"retrain-{pipeline}" and deployment.parameters == {"pipeline": pipeline}
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert [set(t.expect) for t in deployment.triggers] == [{BATCH_ARRIVED}, {DRIFT_DETECTED}]
        assert all(t.match.model_dump() == {"prefect.resource.id": scope_id(), PIPELINE_LABEL: pipeline}
                   for t in deployment.triggers)
    assert [m.name for m in monitors] == ["monitor-sentiment", "monitor-intents"]
    assert [(d.pipeline, str(d.folder)) for d in drop_folders(two_pipelines)] == [
        ("sentiment", "data/incoming"), ("intents", os.path.join("data", "incoming", "intents"))]


def test_a_retrain_names_a_pipeline_of_tasks(two_pipelines):
    from flows.retrain import pipelines_to_retrain
    from pipeline.errors import ConfigError

    assert pipelines_to_retrain(two_pipelines, None) == ["sentiment", "intents"]
    assert pipelines_to_retrain(two_pipelines, "intents") == ["intents"]
    with pytest.raises(ConfigError, match=r"cannot retrain 'intent' \(did you mean 'intents'\?\).*add it there"):
        pipelines_to_retrain(two_pipelines, "intent")


def test_the_old_single_drop_folder_key_says_what_replaced_it(tmp_path, tiny_model):
    from pipeline.errors import ConfigError
    from pipeline.tasks import load_params

    path = write_params(tmp_path, {**tiny_params(tiny_model), "orchestration": {"drop_folder": "data/incoming"}})
    with pytest.raises(ConfigError, match=r"'orchestration.drop_folder' is gone: .* each pipeline's own 'data.incoming'"):
        load_params(path)


@pytest.mark.parametrize("variable, value, said", [
    ("PREFECT_API_URL", "http://127.0.0.1:9/api", "error: the Prefect API at http://127.0.0.1:9/api does not answer"),
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:9", "error: MLflow tracking server http://127.0.0.1:9 is not reachable"),
])
def test_a_server_that_does_not_answer_stops_a_retrain_in_one_line(two_pipelines, variable, value, said):
    done = subprocess.run([sys.executable, "-m", "flows.retrain", "--pipeline", "sentiment"], capture_output=True, text=True,
                          env={**os.environ, variable: value}, timeout=120)
    assert done.returncode == 5 and done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(said)
    assert not os.path.exists(".dvc/tmp/workspaces")  # stopped before anything ran


def test_a_data_path_outside_the_checkout_must_be_absolute_for_a_workspace(tmp_path, monkeypatch):
    from flows.workspaces import link_inputs
    from pipeline.errors import ConfigError
    from pipeline.params import SourceConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'\.\./shared/fpb\.txt' lies outside this checkout.*give it as an absolute path"):
        link_inputs(tmp_path / "workspace", SourceConfig(source="../shared/fpb.txt"))


def test_a_workspace_links_the_inputs_git_lacks_and_drops_links_to_removed_batches(tmp_path, monkeypatch):
    from flows.workspaces import link_inputs
    from pipeline.params import SourceConfig

    monkeypatch.chdir(tmp_path)
    workspace = tmp_path / "workspace"
    write_csv(tmp_path / "data" / "sample.csv", make_rows(5))
    write_csv(tmp_path / "data" / "incoming" / "batch-1.csv", make_rows(5, seed=1))
    (workspace / "data" / "incoming").mkdir(parents=True)
    (workspace / "data" / "incoming" / "README.md").write_text("tracked, the workspace's own")
    (tmp_path / "data" / "incoming" / "README.md").write_text("this checkout's copy")
    link_inputs(workspace, SourceConfig(source="data/sample.csv"))
    assert (workspace / "data" / "sample.csv").resolve() == tmp_path / "data" / "sample.csv"
    assert (workspace / "data" / "incoming" / "batch-1.csv").read_text() == (tmp_path / "data" / "incoming" / "batch-1.csv").read_text()
    assert (workspace / "data" / "incoming" / "README.md").read_text() == "tracked, the workspace's own"  # never replaced

    (tmp_path / "data" / "incoming" / "batch-1.csv").unlink()
    write_csv(tmp_path / "data" / "incoming" / "batch-2.csv", make_rows(5, seed=2))
    link_inputs(workspace, SourceConfig(source="data/sample.csv"))
    assert sorted(p.name for p in (workspace / "data" / "incoming").iterdir()) == ["README.md", "batch-2.csv"]


def test_processes_opening_a_new_embedded_store_at_once_all_succeed(tmp_path):
    """An SQLite store creates its tables on first use; retrains of two pipelines starting together did that at
    once and one failed (`dimension_attributes`). Four processes open a fresh store together: none fails."""
    script = "from pipeline import tracking; tracking.point_at_store(); tracking.check_reachable()"
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    openers = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    errors = [opener.communicate(timeout=120)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, errors
