"""Shared storage: a pipeline's DVC outputs in the DVC remote, and the build each registered version came from.

A retrain with a default DVC remote (`dvc remote add -d`) pulls its pipeline's outputs before its
stages, so a workspace on a machine that never built them skips what is up to date, and pushes
them before register (no version is judged whose data and model are not in the remote) and again
after. Then the registered version gets the dvc.lock it was built from (an artifact of its MLflow
run, `build/dvc.lock`) and, last, the tag `dvc_remote`: a version without it has nothing restorable.

`finetune restore` does the reverse anywhere: in a checkout at the version's `git_commit`, it writes
that dvc.lock and pulls the pipeline's outputs (data, splits, model, reports), so `dvc repro` of that
pipeline there reruns nothing but the `sources` fingerprint, which always runs.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from flows.workspaces import command_env, deployed_commit
from pipeline import tracking
from pipeline.errors import ServiceError, UsageError
from pipeline.registry import registered_version
from pipeline.stages import STAGES

LOCK_FILE = "dvc.lock"
BUILD_FOLDER = "build"  # the artifact folder of the version's run that holds its dvc.lock
REMOTE_TAG = "dvc_remote"  # set on a version once its build is in the remote: the remote's name and URL


def pipeline_stages(pipeline: str) -> list[str]:
    """The pipeline's DVC stages, e.g. collect@sentiment ... register@sentiment."""
    return [f"{stage}@{pipeline}" for stage in STAGES]


def dvc(*args: str, cwd: Path) -> str:
    """Run dvc in `cwd`; its output. A failure is a ServiceError with DVC's first error line (a remote that
    does not answer, missing credentials, a missing object)."""
    done = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, env=command_env())
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
        raise ServiceError(f"dvc {args[0]} failed in {cwd.resolve()}: {(errors or lines or ['no output'])[0]}")
    return done.stdout


def default_remote(cwd: Path) -> str | None:
    """'NAME URL' of the default DVC remote of the checkout at `cwd`; None when it has none."""
    config = dict(line.split("=", 1) for line in dvc("config", "--list", cwd=cwd).splitlines() if "=" in line)  # every level, merged
    name = config.get("core.remote")
    return None if name is None else f"{name} {config.get(f'remote.{name}.url', '?')}"


def pull(workspace: Path, pipeline: str, registry_name: str, remote: str | None) -> None:
    """Fill the workspace from the default remote (None: there is none) before a run: a workspace with no
    dvc.lock of its own first gets the one of the latest version built with a remote."""
    if remote is None:
        print(f"{pipeline}: no default DVC remote: its outputs stay in this machine's DVC cache")
        return
    if not (workspace / LOCK_FILE).exists() and (latest := latest_built_version(registry_name)) is not None:
        download_build_lock(latest, workspace / LOCK_FILE)
        print(f"{pipeline}: {workspace} starts from the dvc.lock of {registry_name} v{latest.version}")
    if (workspace / LOCK_FILE).exists():
        dvc("pull", "--allow-missing", *pipeline_stages(pipeline), cwd=workspace)
        print(f"{pipeline}: the outputs its dvc.lock names pulled from the DVC remote {remote}")


def push(workspace: Path, pipeline: str, remote: str | None) -> None:
    """Push the pipeline's outputs in the workspace to the default remote (None: there is none, nothing to do)."""
    if remote is not None:
        dvc("push", *pipeline_stages(pipeline), cwd=workspace)


def record_build(workspace: Path, decision: dict, remote: str | None) -> None:
    """Log the workspace's dvc.lock into the registered version's run; with a remote, tag the version with it,
    last: the tag says that everything the version was built from is in the remote."""
    import mlflow

    name, version = decision["model_name"], decision["challenger"]["version"]
    client = mlflow.MlflowClient()
    with tracking.registry_errors(f"recording the build of {name} v{version}"):
        client.log_artifact(client.get_model_version(name, version).run_id, str(workspace / LOCK_FILE), BUILD_FOLDER)
        if remote is not None:
            client.set_model_version_tag(name, version, REMOTE_TAG, remote)


def latest_built_version(name: str) -> Any | None:
    """The newest version of registered model `name` whose build is in a DVC remote; None when there is none."""
    import mlflow

    with tracking.registry_errors(f"looking up the builds of {name}"):
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")  # none yet: an empty list
    built = [v for v in versions if REMOTE_TAG in v.tags]
    return max(built, key=lambda v: int(v.version), default=None)


def download_build_lock(version: Any, to: Path) -> None:
    """Copy the dvc.lock a version was built from to `to`."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="build-") as scratch, tracking.registry_errors(f"reading the build of v{version.version}"):
        folder = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=BUILD_FOLDER, dst_path=scratch)
        to.write_bytes((Path(folder) / LOCK_FILE).read_bytes())


def restore(pipeline: str, model_uri: str) -> str:
    """Restore, in this checkout, the data, splits, model and reports a registered version was built from;
    returns a one-line summary. The checkout must be at the version's commit, with no other dvc.lock."""
    version = registered_version(model_uri)
    name = f"{version.name} v{version.version}"
    if version.tags.get("task", pipeline) != pipeline:
        raise UsageError(f"{name} was built by the {version.tags['task']} pipeline, not {pipeline}: pass --pipeline {version.tags['task']}")
    if REMOTE_TAG not in version.tags:
        raise UsageError(f"{name} has no build in a DVC remote (no '{REMOTE_TAG}' tag): only versions registered by a retrain "
                         "with a default DVC remote can be restored (see docs/scale.md)")
    commit, here = version.tags.get("git_commit", "unknown"), deployed_commit()
    if commit != here:
        raise UsageError(f"{name} was built at commit {commit[:12]}, and this checkout is at {here[:12]}: run "
                         f"`git checkout {commit}` (or restore in a fresh clone at that commit)")
    if default_remote(Path(".")) is None:
        raise UsageError(f"this checkout has no default DVC remote to pull {name} from ({version.tags[REMOTE_TAG]}): "
                         "`dvc remote add -d NAME URL`")
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        built = Path(scratch) / LOCK_FILE
        download_build_lock(version, built)
        lock = Path(LOCK_FILE)
        if lock.exists() and lock.read_bytes() != built.read_bytes():
            raise UsageError(f"{lock.resolve()} exists and differs from the one {name} was built from: move it aside "
                             "(it records this checkout's own runs) or restore in a fresh clone")
        lock.write_bytes(built.read_bytes())
    dvc("pull", *pipeline_stages(pipeline), cwd=Path("."))
    return (f"{name}: at commit {commit[:12]}, {LOCK_FILE} of its build written and the {pipeline} pipeline's outputs pulled "
            f"from {version.tags[REMOTE_TAG]}; `dvc repro {pipeline_stages(pipeline)[-1]}` reruns only the sources fingerprint")
