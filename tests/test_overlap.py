"""Retrains that overlap, deployed as users deploy them: `finetune deploy` serving against a real Prefect
server, labelled batches dropped into two pipelines' folders. The two pipelines retrain side by side in
workspaces of their own and both promote; a second batch for one pipeline during its run waits for it and
runs after; files dropped within the settle window make one run. And a run killed mid-train (against
`prefect server start`, whose services free a slot whose lease nobody renews): it ends Crashed, its slot is
freed, the champion is untouched and the next run completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from flows.workspaces import WORKSPACES
from tests.conftest import (
    INTENT_VOCAB,
    commit,
    committed_project,
    make_intent_rows,
    make_rows,
    tiny_params,
    write_csv,
    write_params,
)

pytestmark = pytest.mark.e2e

PIPELINES = ("sentiment", "intents")
SETTLE_SECONDS = 4


def two_pipeline_repo(path: Path, tiny_model: Path) -> Path:
    """A committed git + DVC repo with two pipelines in `pipelines`, each with its own drop folder, no model yet."""
    path.mkdir(exist_ok=True)
    params = tiny_params(tiny_model)
    params["intents"] = {
        **params["sentiment"], "type": "text_classification", "registry": {"name": "support-intents"},
        "data": {"source": "data/intents.csv", "incoming": "data/incoming/intents"},
        "validate": {**params["sentiment"]["validate"], "labels": list(INTENT_VOCAB)}, "augment": {"copies": 0},
    }
    params.update(pipelines=list(PIPELINES), orchestration={"poll_seconds": 0.5, "settle_seconds": SETTLE_SECONDS})
    write_csv(path / "data" / "sample.csv", make_rows(300))
    write_csv(path / "data" / "intents.csv", make_intent_rows(240))
    write_params(path, params)
    return committed_project(path, ignored=("/mlflow/", "/deploy.log"))


@pytest.fixture
def deployed_repo(tmp_path, tiny_model, prefect_server) -> Path:
    """Two pipelines in a fresh repo, on the session's Prefect server (no retrain deployments of theirs on it yet)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # another module's deployments of these names: their runs are not ours
        for name in PIPELINES:
            try:
                client.delete_deployment(client.read_deployment_by_name(f"retrain/retrain-{name}").id)
            except Exception:  # noqa: BLE001 - not there: nothing to delete
                pass
    return two_pipeline_repo(tmp_path, tiny_model)


@contextmanager
def finetune_deploy(repo: Path, *options: str) -> Iterator[Path]:
    """`finetune deploy [OPTIONS]` in `repo` against the test's Prefect server, stopped with Ctrl-C at the end; yields its log."""
    from prefect.settings import PREFECT_API_URL

    log = repo / "deploy.log"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with log.open("w") as out:
        process = subprocess.Popen([Path(sys.executable).parent / "finetune", "deploy", *options], cwd=repo, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            yield log
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for(condition, timeout: float, what: str, log: Path):
    """Poll `condition` until it returns something true; fail with the deploy log's tail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; finetune deploy said:\n{log.read_text()[-3000:]}")


def retrain_runs(client, pipeline: str) -> list:
    """The flow runs of a pipeline's retrain deployment, oldest first."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[f"retrain-{pipeline}"])),
                                 sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def stages_started(client, run) -> bool:
    """Whether a flow run has started its first stage task (its workspace is ready, its inputs linked)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return bool(client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))))


def work_span(client, run) -> tuple[float, float]:
    """When a flow run's stage tasks (its DVC work) started and ended, in seconds since the epoch."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    starts, ends = [t.start_time for t in tasks if t.start_time], [t.end_time for t in tasks if t.end_time]
    return min(starts).timestamp(), max(ends).timestamp()


def promoted(client, run) -> str:
    """The promotion line of a run's `retrain-<pipeline>` artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return next(a.data for a in artifacts if a.key and a.key.startswith("retrain-")).splitlines()[2]


def test_two_pipelines_retrain_side_by_side_and_one_pipeline_waits_its_turn(deployed_repo):
    from prefect.client.orchestration import get_client

    repo = deployed_repo
    with finetune_deploy(repo) as log, get_client(sync_client=True) as client:
        wait_for(lambda: all(retrain_deployed(client, name) for name in PIPELINES), 120, "the deployments", log)
        time.sleep(2)  # the watcher has taken stock of the folders
        for i in range(5):  # five sentiment batches within the settle window, and one for intents
            write_csv(repo / "data" / "incoming" / f"batch-{i}.csv", make_rows(20, seed=100 + i))
            time.sleep(0.3)
        write_csv(repo / "data" / "incoming" / "intents" / "day-1.csv", make_intent_rows(20, seed=7))

        first = wait_for(lambda: [r for r in retrain_runs(client, "sentiment") if stages_started(client, r)], 120,
                         "sentiment's retrain to start its stages", log)[0]
        write_csv(repo / "data" / "incoming" / "batch-late.csv", make_rows(20, seed=200))  # during its run
        done = lambda: [r for name in PIPELINES for r in retrain_runs(client, name) if r.state.is_final()]  # noqa: E731
        wait_for(lambda: len(done()) == 3, 600, "three retrains to end", log)
        sentiment, intents = retrain_runs(client, "sentiment"), retrain_runs(client, "intents")

        states = [r.state.type.value for r in sentiment + intents]
        assert states == ["COMPLETED"] * 3, f"{states}:\n{log.read_text()[-3000:]}"
        assert len(sentiment) == 2 and len(intents) == 1  # the five files made one run, the late batch a second
        assert sentiment[0].id == first.id and all(r.parameters == {"pipeline": "sentiment"} for r in sentiment)
        (first_start, first_end), (late_start, _) = work_span(client, sentiment[0]), work_span(client, sentiment[1])
        intents_start, intents_end = work_span(client, intents[0])
        assert max(first_start, intents_start) < min(first_end, intents_end), "the two pipelines did not overlap"
        assert sentiment[1].start_time.timestamp() < first_end <= late_start, "the late batch's run did not wait"
        assert "fin-sentiment v1 -> @champion" in promoted(client, sentiment[0])
        assert "support-intents v1 -> @champion" in promoted(client, intents[0])
        assert "fin-sentiment v2 -> " in promoted(client, sentiment[1])

    train = (repo / WORKSPACES / "sentiment" / "data" / "split" / "sentiment" / "train.jsonl").read_text()
    assert "batch-late.csv" in train and "batch-4.csv" in train  # every batch was read in the pipeline's workspace
    assert not (repo / "models").exists()  # nothing ran in the deploying checkout


def retrain_deployed(client, pipeline: str) -> bool:
    """Whether `finetune deploy` has registered the pipeline's retrain deployment yet."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(f"retrain/retrain-{pipeline}") is not None
    except ObjectNotFound:
        return False


def deploy_pid(log: Path) -> int:
    """The process id of the `finetune deploy` writing `log`."""
    import psutil

    return next(p.pid for p in psutil.process_iter(["cmdline", "cwd"])
                if p.info["cmdline"] and p.info["cmdline"][-1] == "deploy" and p.info["cwd"] == str(log.parent))


def trainer(pipeline: str):
    """The process running `pipeline`'s train stage on this machine, or None."""
    import psutil

    return next((p for p in psutil.process_iter(["cmdline"]) if "stage train --pipeline " + pipeline in " ".join(p.info["cmdline"] or [])),
                None)


def kill_training(pipeline: str, is_root: Callable) -> int:
    """SIGKILL the ancestor of `pipeline`'s train stage that `is_root` picks, with everything it started; its pid."""
    training = trainer(pipeline)
    assert training is not None, "no train stage running"
    root = next(p for p in [training, *training.parents()] if is_root(p))
    for process in [root, *root.children(recursive=True)]:
        process.kill()
    return root.pid


def test_a_retrain_killed_mid_train_crashes_frees_its_slot_and_the_next_one_completes(tmp_path, tiny_model, real_prefect_server):
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    repo = two_pipeline_repo(tmp_path / "repo", tiny_model)
    registry = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    versions = lambda: sorted(str(v.version) for v in registry.search_model_versions("name='fin-sentiment'"))  # noqa: E731
    champion = lambda: str(registry.get_model_version_by_alias("fin-sentiment", "champion").version)  # noqa: E731
    with finetune_deploy(repo) as log, get_client(sync_client=True) as client:
        ended = lambda run: (found := client.read_flow_run(run.id)).state.is_final() and found  # noqa: E731
        wait_for(lambda: retrain_deployed(client, "sentiment"), 120, "the deployments", log)
        first = run_deployment("retrain/retrain-sentiment", timeout=0)
        assert wait_for(lambda: ended(first), 300, "the first retrain", log).state.is_completed()
        assert champion() == "1"

        params = yaml.safe_load((repo / "params.yaml").read_text())  # a change to train on, deployed by a commit
        params["sentiment"]["train"]["seed"] = 2
        write_params(repo, params)
        commit(repo, "another seed")
        second = run_deployment("retrain/retrain-sentiment", timeout=0)
        wait_for(lambda: trainer("sentiment"), 300, "the second retrain to train", log)
        deploying = deploy_pid(log)
        kill_training("sentiment", lambda p: p.ppid() == deploying)  # the flow-run process, a child of `finetune deploy`
        assert wait_for(lambda: ended(second), 120, "the killed run to end", log).state.is_crashed()
        assert champion() == "1" and versions() == ["1"]  # untouched, nothing registered

        third = run_deployment("retrain/retrain-sentiment", timeout=0)  # waits until the server frees the dead run's slot
        assert wait_for(lambda: ended(third), 420, "the next retrain", log).state.is_completed(), log.read_text()[-3000:]
        limit = client.read_global_concurrency_limit_by_name("finetune-retrain-sentiment")
        assert (limit.limit, limit.active_slots) == (1, 0)
    assert versions() == ["1", "2"]
