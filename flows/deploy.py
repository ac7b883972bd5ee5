"""`finetune deploy`: serve the retrain and monitor flows on their cron schedules and on events.

The retrain deployment runs nightly (`orchestration.schedule`) and whenever one of two events
names this workspace: `finetune.batch.arrived` (emitted here when a new file lands in the drop
folder) and `finetune.drift.detected` (emitted by the monitor flow). Schedules and triggers are
stored with the deployment on the Prefect server, so they survive a restart of this process.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger, emit_event

from pipeline.config import Params
from pipeline.readers import EXTENSION_FORMATS

BATCH_ARRIVED = "finetune.batch.arrived"
DRIFT_DETECTED = "finetune.drift.detected"


def workspace_resource() -> dict[str, str]:
    """The Prefect resource events are about: this workspace, so two checkouts never trigger each other."""
    return {"prefect.resource.id": f"finetune.workspace.{Path.cwd().resolve()}", "prefect.resource.name": Path.cwd().name}


def emit(event: str, payload: dict) -> None:
    """Emit a Prefect event about this workspace (what the retrain deployment's triggers listen for)."""
    emit_event(event=event, resource=workspace_resource(), payload=payload)


def build_deployments(params: Params) -> list[RunnerDeployment]:
    """The retrain deployment (cron + batch and drift triggers) and the monitor deployment (cron)."""
    from flows.monitor import monitor
    from flows.retrain import retrain

    resource = {"prefect.resource.id": workspace_resource()["prefect.resource.id"]}
    triggers = [
        DeploymentEventTrigger(name="new labelled batch", expect={BATCH_ARRIVED}, match=resource),
        DeploymentEventTrigger(name="drift detected", expect={DRIFT_DETECTED}, match=resource),
    ]
    return [
        retrain.to_deployment(name="retrain", cron=params.orchestration.schedule, triggers=triggers),
        monitor.to_deployment(name="monitor", cron=params.monitoring.schedule),
    ]


def batch_files(folder: Path) -> set[str]:
    """Names of the batch files in the drop folder (README and other files are not batches)."""
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSION_FORMATS}


def watch_drop_folder(folder: Path, poll_seconds: float, stop: threading.Event) -> None:
    """Emit BATCH_ARRIVED for each batch file that appears; what was there at start is not new."""
    seen = batch_files(folder)
    while not stop.wait(poll_seconds):
        current = batch_files(folder)
        for name in sorted(current - seen):
            emit(BATCH_ARRIVED, {"file": str(folder / name)})
        seen = current


def deploy(params: Params) -> None:
    """Watch the drop folder and serve the deployments until interrupted."""
    stop = threading.Event()
    folder = Path(params.orchestration.drop_folder)
    watcher = threading.Thread(target=watch_drop_folder, args=(folder, params.orchestration.poll_seconds, stop), daemon=True)
    watcher.start()
    try:
        serve(*build_deployments(params))
    finally:
        stop.set()
