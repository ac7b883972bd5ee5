"""Deployments in a Prefect work pool, run by workers as on two machines: `finetune deploy --pool` in one
checkout registers them and watches the drop folders; two process workers, each in a clone of its own
with a DVC cache of its own, run them. Everything they share is a server on loopback: `prefect server
start`, an MLflow tracking server (artifacts on the S3-compatible endpoint) and a DVC remote on it.
Labelled batches for two pipelines dropped at once are retrained side by side on the two workers and both
promoted, with the builds in the buckets."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from flows.pool import CHECKOUT_ENV, POOL_ENV, enter_checkout
from flows.workspaces import WORKSPACES
from pipeline.errors import UsageError
from tests.conftest import commit, make_intent_rows, make_rows, write_csv, write_params
from tests.mlflow_server import mlflow_server
from tests.processes import stop_group
from tests.test_dvc_pipeline import BIN, sh
from tests.test_overlap import (
    PIPELINES,
    finetune_deploy,
    kill_training,
    promoted,
    retrain_runs,
    trainer,
    two_pipeline_repo,
    wait_for,
    work_span,
)

POOL = "finetune-test"


@contextmanager
def worker(checkout: Path) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool POOL --limit 1` for the clone `checkout` (its log beside it), stopped with
    everything it started."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), CHECKOUT_ENV: str(checkout), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with (checkout.parent / "worker.log").open("w") as out:
        process = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1", "--name", checkout.parent.name],
                                   cwd=checkout.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


def kill_worker_training(pipeline: str, workers: list[subprocess.Popen]) -> int:
    """SIGKILL the worker whose flow run trains `pipeline`, with everything it started (its machine went down); its index."""
    pids = [w.pid for w in workers]
    return pids.index(kill_training(pipeline, lambda p: p.pid in pids))


def ran_in(client, run, clones: list[Path]) -> Path:
    """The clone a retrain flow run ran in, from its log line `PIPELINE: in WORKSPACE at COMMIT`."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    workspace = next(log.message.split(": in ", 1)[1].split(" at ")[0] for log in logs if ": in " in log.message)
    return next(clone for clone in clones if workspace.startswith(str(clone) + os.sep))


def pool_repo(path: Path, tiny_model: Path, drop: Path, remote: str, endpoint: str) -> Path:
    """The two-pipeline project with drop folders on storage every machine sees and a default DVC remote, committed."""
    repo = two_pipeline_repo(path, tiny_model)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name in PIPELINES:
        params[name]["data"]["incoming"] = str(drop / name)
    params["orchestration"]["heartbeat_seconds"] = 30  # the least Prefect allows: a dead worker's run is Crashed after 90 s
    write_params(repo, params)
    sh("dvc", "remote", "add", "-d", "storage", remote, cwd=repo)
    sh("dvc", "remote", "modify", "storage", "endpointurl", endpoint, cwd=repo)
    commit(repo, "drop folders on shared storage, a DVC remote on S3")
    return repo


def pool_deployments(client) -> dict[str, object]:
    """The deployments of the work pool, by name."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    found = client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])))
    return {deployment.name: deployment for deployment in found}


@pytest.mark.e2e
def test_two_workers_in_clones_of_their_own_retrain_two_pipelines_at_once_and_outlive_one_killed(
        tmp_path, tiny_model, real_prefect_server, s3, monkeypatch):
    import mlflow
    from prefect.client.orchestration import get_client

    drop, started = tmp_path / "drop", time.monotonic()
    repo = pool_repo(tmp_path / "origin", tiny_model, drop, f"{s3.create_bucket('pool-dvc')}/dvc", s3.endpoint)
    clones = [tmp_path / f"machine-{i}" / "finetune-pipeline" for i in (1, 2)]
    for clone in clones:
        clone.parent.mkdir()
        sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    (tmp_path / "mlflow").mkdir()
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", f"{s3.create_bucket('pool-mlflow')}/mlflow",
                       tmp_path / "mlflow", s3.endpoint) as tracking_url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_url)  # for every process started below, as on every machine
        monkeypatch.setenv("PREFECT_API_URL", real_prefect_server)
        refused = subprocess.run([str(BIN / "finetune"), "deploy", "--pool", POOL], cwd=repo, capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stderr.startswith("error: the Prefect server at "), refused.stderr
        assert f"has no work pool '{POOL}': create it with `prefect work-pool create {POOL} --type process`" in refused.stderr
        sh("prefect", "work-pool", "create", POOL, "--type", "process", cwd=tmp_path)
        registry = mlflow.MlflowClient(tracking_uri=tracking_url)
        with (finetune_deploy(repo, "--pool", POOL) as log, worker(clones[0]) as first_worker, worker(clones[1]) as second_worker,
              get_client(sync_client=True) as client):
            names = {f"{flow}-{name}" for flow in ("retrain", "monitor") for name in PIPELINES}
            wait_for(lambda: pool_deployments(client).keys() == names, 120, "the deployments", log)
            wait_for(lambda: "watching the drop folders" in log.read_text(), 60, "the watcher", log)
            deployments = pool_deployments(client)  # read once registered whole: each is applied, then given its pull step
            for deployment in deployments.values():  # each runs in the worker's clone, in the pool's scope, with a heartbeat
                assert deployment.pull_steps == [{"flows.pool.enter_checkout": {}}] and deployment.path is None
                assert deployment.job_variables == {"env": {POOL_ENV: POOL, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
                assert deployment.schedules
            time.sleep(2)  # the watcher has taken stock of the folders
            write_csv(drop / "sentiment" / "day-1.csv", make_rows(20, seed=100))
            write_csv(drop / "intents" / "day-1.csv", make_intent_rows(20, seed=7))

            ended = lambda name: [r for r in retrain_runs(client, name) if r.state.is_final()]  # noqa: E731 - not the nightly ones scheduled
            wait_for(lambda: all(ended(name) for name in PIPELINES), 600, "both retrains to end", log)
            time.sleep(3)  # their last logs reach the server
            (sentiment,), (intents,) = ended("sentiment"), ended("intents")
            assert [sentiment.state.type.value, intents.state.type.value] == ["COMPLETED"] * 2, log.read_text()[-3000:]
            assert "fin-sentiment v1 -> @champion" in promoted(client, sentiment)
            assert "support-intents v1 -> @champion" in promoted(client, intents)
            (sentiment_start, sentiment_end), (intents_start, intents_end) = work_span(client, sentiment), work_span(client, intents)
            assert max(sentiment_start, intents_start) < min(sentiment_end, intents_end), "the two retrains did not overlap"
            assert ran_in(client, sentiment, clones) != ran_in(client, intents, clones)  # one worker each
            print(f"two-worker pool test: both promoted after {time.monotonic() - started:.0f} s")

            # A worker killed mid-train (its machine gone): its run is marked Crashed for want of heartbeats, nothing
            # is registered, and the next batch's run goes to the worker left and completes.
            write_csv(drop / "sentiment" / "day-2.csv", make_rows(20, seed=101))
            running = lambda: [r for r in retrain_runs(client, "sentiment") if r.state.is_running()]  # noqa: E731
            (killed,) = wait_for(running, 300, "the second sentiment retrain", log)
            wait_for(lambda: trainer("sentiment"), 300, "it to train", log)
            victim = kill_worker_training("sentiment", [first_worker, second_worker])
            crashed = wait_for(lambda: (run := client.read_flow_run(killed.id)).state.is_crashed() and run, 300, "the crash", log)
            assert "no heartbeat for 90 s" in crashed.state.message
            assert [str(v.version) for v in registry.search_model_versions("name = 'fin-sentiment'")] == ["1"]
            write_csv(drop / "sentiment" / "day-3.csv", make_rows(20, seed=102))
            after = lambda: [r for r in ended("sentiment") if r.id not in (sentiment.id, killed.id)]  # noqa: E731
            (following,) = wait_for(after, 420, "the next sentiment retrain", log)
            assert following.state.is_completed(), log.read_text()[-3000:]
            time.sleep(3)
            assert ran_in(client, following, clones) == clones[1 - victim]
            assert "fin-sentiment v2 -> " in promoted(client, following)
    print(f"two-worker pool test: {time.monotonic() - started:.0f} s")

    assert not (repo / WORKSPACES).exists() and not (repo / "mlflow").exists()  # nothing ran in the deploying checkout
    # The builds, in the buckets: DVC's outputs in the remote, the models through the tracking server's proxy.
    assert s3.keys("pool-dvc", "dvc/files/md5/")
    stored = {key.rsplit("/", 1)[-1] for key in s3.keys("pool-mlflow", "mlflow/")}
    assert {"model.safetensors", "promotion.json"} <= stored


def test_a_worker_without_a_checkout_is_told_how_to_start(tmp_path, monkeypatch):
    """The pull step, as a worker's flow run calls it: one line saying what to set, or where it points wrongly."""
    monkeypatch.delenv(CHECKOUT_ENV, raising=False)
    with pytest.raises(UsageError, match=f"{CHECKOUT_ENV} is not set on this worker"):
        enter_checkout()
    monkeypatch.setenv(CHECKOUT_ENV, str(tmp_path))
    with pytest.raises(UsageError, match="no params.yaml and no dvc.yaml there"):
        enter_checkout()


def test_a_pool_needs_a_prefect_server_that_workers_reach():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import check_pool

    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(UsageError, match="PREFECT_API_URL is not set"):
        check_pool(POOL)


def test_a_pool_refuses_a_registry_on_one_workers_disk(monkeypatch):
    """Workers of a pool on their own disks' MLflow stores would each promote against a champion of their own."""
    from flows.pool import require_shared_registry
    from pipeline.errors import ConfigError

    monkeypatch.setattr("pipeline.tracking.USER_TRACKING_URI", None)  # the embedded store under mlflow/
    monkeypatch.delenv(POOL_ENV, raising=False)
    require_shared_registry()  # outside a pool: fine
    monkeypatch.setenv(POOL_ENV, POOL)
    with pytest.raises(ConfigError, match=f"work pool '{POOL}': the MLflow store here is .* set MLFLOW_TRACKING_URI"):
        require_shared_registry()
    monkeypatch.setattr("pipeline.tracking.USER_TRACKING_URI", "http://tracking.example:5000")
    require_shared_registry()
