"""`finetune restore` and the DVC remote's failures, on a real git + DVC repo and an embedded MLflow store:
each refusal is one line that says what to do, and nothing is written before it. (The whole round trip
through S3, a retrain that pushes and a fresh clone that restores, is in tests/test_tracking_server.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flows.storage import REMOTE_TAG, default_remote, push
from pipeline.cli import main
from pipeline.errors import ServiceError
from tests.conftest import commit, committed_project, make_rows, tiny_params, write_csv, write_params
from tests.test_dvc_pipeline import sh

NAME = "fin-sentiment"
BUILD_LOCK = "schema: '2.0'\nstages: {}\n"


@pytest.fixture
def repo(tmp_path, monkeypatch, tiny_model) -> Path:
    """A committed project (git + DVC) as cwd, its embedded MLflow store empty."""
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "data" / "sample.csv", make_rows(30))
    write_params(tmp_path, tiny_params(tiny_model))
    return committed_project(tmp_path, ignored=("/mlflow/",))


def register_version(tags: dict[str, str]) -> str:
    """A registered version of NAME whose run holds build/dvc.lock, with `tags`; returns its number."""
    import mlflow

    from pipeline import tracking

    tracking.configure("test")
    with mlflow.start_run() as run:
        mlflow.log_text(BUILD_LOCK, "build/dvc.lock")
    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags).version)


def add_remote(url: Path) -> None:
    """A default DVC remote on a local path (absolute)."""
    sh("dvc", "remote", "add", "-d", "storage", str(url), cwd=Path.cwd())


def head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def restore(version: str, capsys) -> tuple[int, str]:
    """`finetune restore` of the version: its exit code and the last line it wrote to stderr (MLflow logs there too)."""
    code = main(["restore", "--model", f"models:/{NAME}/{version}"])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_a_version_without_a_build_in_a_remote_is_refused(repo, capsys):
    version = register_version({"git_commit": head()})
    code, err = restore(version, capsys)
    assert code == 2 and err.startswith(f"error: {NAME} v{version} has no build in a DVC remote (no '{REMOTE_TAG}' tag)")
    assert not (repo / "dvc.lock").exists()


def test_a_version_of_another_pipeline_is_refused(repo, capsys):
    version = register_version({"task": "ner", "git_commit": head(), REMOTE_TAG: "storage s3://bucket/dvc"})
    code, err = restore(version, capsys)
    assert code == 2 and err.endswith(f"{NAME} v{version} was built by the ner pipeline, not sentiment: pass --pipeline ner")


def test_a_checkout_at_another_commit_is_told_which_to_check_out(repo, capsys):
    version = register_version({"git_commit": "0123456789abcdef0123", REMOTE_TAG: "storage s3://bucket/dvc"})
    code, err = restore(version, capsys)
    assert code == 2 and f"was built at commit 0123456789ab, and this checkout is at {head()[:12]}" in err
    assert "`git checkout 0123456789abcdef0123`" in err and not (repo / "dvc.lock").exists()


def test_a_different_dvc_lock_is_never_overwritten(repo, capsys):
    version = register_version({"git_commit": head(), REMOTE_TAG: "storage s3://bucket/dvc"})
    add_remote(repo.parent / f"{repo.name}-remote")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {mine: {}}\n")
    code, err = restore(version, capsys)
    assert code == 2 and "dvc.lock exists and differs from the one" in err and "move it aside" in err
    assert "mine" in (repo / "dvc.lock").read_text()


def test_a_checkout_without_a_remote_is_told_how_to_add_one(repo, capsys):
    version = register_version({"git_commit": head(), REMOTE_TAG: "storage s3://bucket/dvc"})
    code, err = restore(version, capsys)
    assert code == 2 and err.endswith("`dvc remote add -d NAME URL`") and "storage s3://bucket/dvc" in err


def test_a_remote_that_cannot_take_the_push_is_one_line_with_dvcs_reason(repo, tmp_path):
    blocker = tmp_path.parent / f"{tmp_path.name}-not-a-folder"
    blocker.write_text("a file where the remote's folder should be")
    add_remote(blocker)
    sh("dvc", "repro", "collect@sentiment", cwd=repo)  # outputs in the cache, to push
    with pytest.raises(ServiceError, match=r"^dvc push failed in .*: .*") as failed:
        push(repo, "sentiment", default_remote(repo))
    assert "\n" not in str(failed.value)


@pytest.mark.e2e
def test_a_remote_that_does_not_answer_fails_the_retrain_before_anything_is_registered(repo, prefect_server):
    import mlflow

    from flows.retrain import retrain
    from flows.workspaces import WORKSPACES
    from pipeline import tracking

    sh("dvc", "remote", "add", "-d", "storage", "s3://bucket/dvc", cwd=repo)
    sh("dvc", "remote", "modify", "storage", "endpointurl", "http://127.0.0.1:9", cwd=repo)  # nothing listens on port 9
    commit(repo, "a DVC remote that does not answer")
    state = retrain(pipeline="sentiment", return_state=True)
    assert state.is_failed() and "dvc push failed in " in state.message, state.message
    assert not (repo / WORKSPACES / "sentiment" / "reports" / "sentiment" / "promotion.json").exists()
    tracking.point_at_store()
    assert not mlflow.MlflowClient().search_registered_models()  # nothing registered, so nothing promoted
