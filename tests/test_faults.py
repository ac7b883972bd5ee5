"""Faults injected into real components, each in a temp workspace: SIGKILL of a training run
under `dvc repro` (the rerun resumes), SIGKILL inside register before the alias moves (the
aliases stay as they were), a tracking server that is down, two retrains at once, and an
output folder that cannot be written. Nothing of the project is mocked; processes are real
and are really killed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.paths import PipelinePaths
from pipeline.records import load_json
from pipeline.stages import run_stage
from tests.conftest import tiny_params, write_params
from tests.test_dvc_pipeline import BIN, init_repo, sh
from tests.test_promotion import UNTRAINED, aliases, train_and_register

PATHS = PipelinePaths("sentiment")
PARAMS = Path("params.yaml")
NAME = "fin-sentiment"
PREPARE = ("collect", "validate", "split", "augment", "pretrain")  # what train needs, run in-process (fast)


def run_stages(*stages: str) -> None:
    for stage in stages:
        run_stage(stage, "sentiment", PARAMS)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a `dvc` / `finetune` child: the venv's bin first, the project's default
    store (mlflow/ in the workspace) unless `extra` names another, MLflow's HTTP retries short."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri() in this process exported it
    return {**env, **extra}


def complete_checkpoints() -> list[Path]:
    """Checkpoints the Trainer finished saving (it writes trainer_state.json last)."""
    return sorted(p.parent for p in PATHS.checkpoints.glob("*/checkpoint-*/trainer_state.json"))


# 1. SIGKILL during training, then `dvc repro` again


@pytest.mark.e2e
def test_sigkill_during_training_then_dvc_repro_resumes_from_the_last_checkpoint(workspace, tiny_model):
    import mlflow

    # Three epochs and no early stop: after the first checkpoint there are two epochs left to kill in.
    init_repo(workspace, tiny_params(tiny_model, sentiment__train__epochs=3, sentiment__train__early_stopping_patience=10))
    run_stages(*PREPARE)

    log = (workspace / "killed.log").open("w")
    # A session of its own, so the kill reaches dvc and the `finetune stage train` it started (kill -9 -PGID).
    repro = subprocess.Popen(["dvc", "repro", "--single-item", "train@sentiment"], cwd=workspace, env=child_env(),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not complete_checkpoints():
        assert repro.poll() is None, f"training ended before its first checkpoint:\n{(workspace / 'killed.log').read_text()}"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    os.killpg(repro.pid, signal.SIGKILL)
    assert repro.wait() == -signal.SIGKILL
    log.close()

    checkpoint = complete_checkpoints()[-1]
    run_id = load_json(checkpoint.parent / "mlflow_run.json")["run_id"]
    assert not (PATHS.model_dir / "model.safetensors").exists(), "killed before the model was saved"
    assert not (workspace / "dvc.lock").exists(), "DVC recorded nothing for the killed stage"
    # A kill during a save leaves the next checkpoint without trainer_state.json: leave one like that.
    step = int(checkpoint.name.split("-")[1])
    partial = checkpoint.parent / f"checkpoint-{2 * step}"
    partial.mkdir()
    shutil.copy(checkpoint / "config.json", partial / "config.json")

    rerun = sh("dvc", "repro", "--single-item", "train@sentiment", cwd=workspace)
    assert "had been killed. Auto removed it from the lock file" in rerun, "DVC clears the dead process's rwlock entry itself"
    assert f"removing {partial}, left incomplete by an interrupted save" in rerun
    assert f"resuming from {checkpoint}" in rerun
    assert [h["epoch"] for h in load_json(PATHS.history)] == [1.0, 2.0, 3.0], "epoch 1 from before the kill, 2 and 3 after"
    assert load_json(PATHS.train_summary)["epochs_run"] == 3.0
    assert (PATHS.model_dir / "model.safetensors").exists()
    assert load_json(PATHS.model_dir / "mlflow_run.json")["run_id"] == run_id, "the same MLflow run continued"
    assert not PATHS.checkpoints.exists() or not any(PATHS.checkpoints.iterdir()), "checkpoints removed after success"
    assert "train@sentiment" in (workspace / "dvc.lock").read_text()

    run_stages("evaluate")
    assert {"accuracy", "f1_macro", "per_class"} <= load_json(PATHS.metrics)["test"].keys(), "the resumed model is complete"
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run_id, "FINISHED")], "one run, finished"


# 2. SIGKILL inside register, before the alias moves

# MLflow (not the project) is patched in the child: the process SIGKILLs itself when register
# reaches the named MlflowClient call, as a kill -9 at that moment would.
KILL_AT = """
import os, signal, sys
import mlflow

def die(*args, **kwargs):
    print("SIGKILL at MlflowClient.{method}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

setattr(mlflow.MlflowClient, "{method}", die)
from pipeline.cli import main
sys.exit(main(["stage", "register", "--pipeline", "sentiment"]))
"""


@pytest.mark.e2e
def test_sigkill_in_register_before_the_alias_moves_leaves_the_aliases_alone(workspace, tiny_model):
    import mlflow

    first = train_and_register(tiny_model, UNTRAINED)  # a useless model: v1, the champion
    assert first["promoted"] and aliases() == {"champion": "1"}
    write_params(workspace, tiny_params(tiny_model))  # a model that learns: it should win
    run_stages("train", "evaluate")

    killed = subprocess.run([sys.executable, "-c", KILL_AT.format(method="set_registered_model_alias")],
                            cwd=workspace, env=child_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "SIGKILL at MlflowClient.set_registered_model_alias" in killed.stdout

    client = mlflow.MlflowClient()
    assert aliases() == {"champion": "1"}, "the champion did not move"
    orphan = client.get_model_version(NAME, "2")  # registered, with its tags, but no alias
    assert orphan.aliases == [] and orphan.tags["run_id"]
    assert load_json(PATHS.promotion)["challenger"]["version"] == "1", "promotion.json is only written after the alias"

    run_stages("register")  # the rerun, as `dvc repro` would do: the stage never completed
    decision = load_json(PATHS.promotion)
    assert decision["promoted"] and decision["challenger"]["version"] == "3" and decision["champion"]["version"] == "1"
    assert aliases() == {"champion": "3"}


# 3. The tracking server is down


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_tracking_server_down_gives_a_clear_error_and_promotes_nothing(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=1))
    run_stages(*PREPARE, "train", "evaluate")  # a model ready to register, trained with the local store
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = child_env(MLFLOW_TRACKING_URI=uri)
    finetune = str(BIN / "finetune")
    children = [subprocess.Popen([finetune, "stage", stage, "--pipeline", "sentiment"], cwd=workspace, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for stage in ("train", "register")]
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 5, out + err
        assert f"error: MLflow tracking server {uri} is not reachable" in err
        assert "Traceback" not in out + err
    assert not PATHS.promotion.exists(), "nothing was registered or promoted"
    assert not list(PATHS.checkpoints.glob("*/checkpoint-*")), "train stopped before training"


# 4. Two retrains at once


@pytest.mark.e2e
def test_two_retrains_at_once_take_turns_on_the_workspace_lock(workspace, tiny_model):
    """Two threads do what the retrain flow does around DVC: hold the workspace's lock
    (pipeline.locks.file_lock) while a real `dvc repro` runs. The second waits for the first; both succeed."""
    from flows.workspaces import command_env
    from pipeline.locks import file_lock

    init_repo(workspace, tiny_params(tiny_model))
    spans: dict[str, tuple[float, float, int, str]] = {}

    def retrain(name: str) -> None:
        with file_lock(workspace / ".dvc" / "tmp" / "finetune-retrain.lock"):
            start = time.monotonic()
            done = subprocess.run(["dvc", "repro", "--single-item", "sources"], cwd=workspace,
                                  env=command_env(), capture_output=True, text=True, timeout=600)
            spans[name] = (start, time.monotonic(), done.returncode, done.stdout + done.stderr)

    threads = [threading.Thread(target=retrain, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for name, (_, _, code, output) in spans.items():
        assert code == 0, f"{name} failed:\n{output}"
        assert "Running stage 'sources'" in output
    earlier, later = sorted(spans.values())
    assert earlier[1] <= later[0], "the runs did not overlap"


# 5. An output folder that cannot be written


def block(folder: str) -> None:
    """Put a regular file where an output folder goes (as root, chmod would not stop a write)."""
    if Path(folder).exists():
        shutil.move(folder, f"{folder}.aside")
    Path(folder).write_text("a file, not a folder\n")


def unblock(folder: str) -> None:
    Path(folder).unlink()
    if Path(f"{folder}.aside").exists():
        shutil.move(f"{folder}.aside", folder)


def test_an_output_folder_that_cannot_be_written_is_named_without_a_traceback(workspace, tiny_model, capsys):
    import mlflow

    run_stages(*PREPARE)
    for stage, folder in (("train", "models"), ("evaluate", "metrics"), ("register", "reports")):
        block(folder)
        assert main(["stage", stage, "--pipeline", "sentiment"]) == 6  # what `finetune stage ...` exits with
        error = capsys.readouterr().err
        doing = "read reports/sentiment/val_predictions.jsonl" if stage == "register" else f"write to {folder}/"  # register's input is there too
        assert f"error: cannot {doing}: {folder} is a file, not a folder" in error, error
        assert "Traceback" not in error
        unblock(folder)
        if stage == "train":
            assert not list(PATHS.checkpoints.glob("*/checkpoint-*")), "stopped before training, not after"
        assert main(["stage", stage, "--pipeline", "sentiment"]) == 0, "the same stage works once the path is fixed"
    assert not PATHS.promotion.exists() or load_json(PATHS.promotion)["challenger"]["version"] == "1"
    versions = mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")
    assert [str(v.version) for v in versions] == ["1"], "the failed register registered nothing"
