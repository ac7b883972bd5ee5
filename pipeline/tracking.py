"""MLflow: the embedded store by default, one run per pipeline execution, lineage tags.

The train stage opens the run and records its id next to the model; evaluate and register
log into the same run, so one run holds params, curves, metrics, reports, plots and model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from pipeline.errors import TrackingError
from pipeline.locks import file_lock
from pipeline.params import TaskConfig, section_hash
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, save_json

STORE_DIR = Path("mlflow")
RUN_FILE = "mlflow_run.json"
# Read once: mlflow.set_tracking_uri() writes this variable, so reading it later would only
# echo our own earlier choice back instead of the user's.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
ARTIFACT_PROXY = "/mlflow-artifacts/"  # the path of a tracking server's artifact proxy (--artifacts-destination)
PROBE_TIMEOUT_S = 10  # the early check of a tracking server; MLflow's own client retries for minutes


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when the user set it (a team server), else SQLite under mlflow/."""
    return USER_TRACKING_URI or f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def local_store_folder(uri: str | None = None) -> Path | None:
    """The folder of a store on this machine's disk (the embedded SQLite one, or MLFLOW_TRACKING_URI set to
    sqlite:///PATH or a folder), or None for a tracking server."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri.removeprefix("file://").removeprefix("file:")).resolve()
    return None


def point_at_store() -> None:
    """Point MLflow at the tracking store (without an experiment: for reading the registry)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())


def configure(experiment: str) -> str:
    """Point MLflow at the store and return the experiment id, creating it on first use."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    check_reachable(uri)  # the store's first use: fail here with the URI named
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    # With the embedded store, artifacts go beside the database instead of ./mlruns.
    location = None if USER_TRACKING_URI else (STORE_DIR / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(experiment, artifact_location=location)


def check_reachable(uri: str | None = None) -> None:
    """Fail early and clearly (TrackingError, naming the URI) when the tracking store does not answer.

    A server is probed once with a short timeout first: MLflow's client would retry for minutes
    and then end in a traceback."""
    import urllib.error
    import urllib.request  # here: every `finetune` command imports this module, few probe a server

    import mlflow

    uri = uri or tracking_uri()
    hint = "start the server, or unset MLFLOW_TRACKING_URI to use the local store under mlflow/"
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered (a proxy may refuse /health); the query below decides
        except OSError as exc:  # refused, timed out, unknown host
            raise TrackingError(f"MLflow tracking server {uri} is not reachable: {getattr(exc, 'reason', exc)} ({hint})") from None
    folder = local_store_folder(uri) if uri.startswith("sqlite:") else None
    # An SQLite store creates its tables on first use, and two processes doing that at once collide
    # (runs of two pipelines starting together): the first query waits for a lock beside the database.
    try:
        with file_lock(folder / "finetune-store.lock") if folder else nullcontext():
            mlflow.search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingError(f"MLflow tracking store {uri} is not reachable: {exc} ({hint})") from None


@contextmanager
def registry_errors(action: str) -> Iterator[None]:
    """Raise any MLflow failure inside (a server error, a timeout, a refused permission) as one
    TrackingError naming what failed and the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        where = " (an upload or download through the server's artifact proxy: see its log)" if ARTIFACT_PROXY in exc.message else ""
        raise TrackingError(f"{action}: the MLflow store {tracking_uri()} failed{where}: {exc.message}") from None


@contextmanager
def resume_run(model_dir: Path, experiment: str) -> Iterator[object]:
    """Continue the MLflow run that trained the model in `model_dir`."""
    import mlflow

    configure(experiment)
    run_id = load_json(model_dir / RUN_FILE)["run_id"]
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def record_run(model_dir: Path, run_id: str, tags: dict[str, str]) -> None:
    save_json(model_dir / RUN_FILE, {"run_id": run_id, "tags": tags})


def run_tags(model_dir: Path) -> dict[str, str]:
    return load_json(model_dir / RUN_FILE)["tags"]


def lineage_tags(pipeline: str, config: TaskConfig, paths: PipelinePaths) -> dict[str, str]:
    """What a registered model can be traced back to: code, data and configuration."""
    return {
        "task": pipeline,
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "data_hash": files_hash([paths.augmented_train, paths.split("val"), paths.split("test")]),
        "params_hash": section_hash(config.training_sections()),  # promotion and registry settings can change without it
        "base_model": config.model.name,
        "domain_adapted": str(config.pretrain.enabled).lower(),  # fine-tuned from models/<pipeline>-pretrained
    }


def files_hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
