"""`finetune deploy`: serve the retrain and monitor flows on their cron schedules and on events.

The retrain deployment runs nightly (`orchestration.schedule`) and whenever one of two events
names this workspace: `finetune.batch.arrived` (emitted here when a new file lands in the drop
folder) and `finetune.drift.detected` (emitted by the monitor flow of any pipeline; the retrain
brings every pipeline of `tasks` up to date, so the drifted one is retrained when its data
changed). Each pipeline of `monitoring.tasks` has its own monitor deployment, `monitor-<pipeline>`,
on `monitoring.schedule`. Schedules and triggers are stored with the deployment on the Prefect
server, so they survive a restart of this process.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.events import BATCH_ARRIVED, DRIFT_DETECTED, emit, workspace_resource
from flows.monitor import monitor
from flows.retrain import retrain
from pipeline.params import Params
from pipeline.readers import batch_files


def build_deployments(params: Params) -> list[RunnerDeployment]:
    """The retrain deployment (cron + batch and drift triggers), then one monitor deployment (cron) per
    pipeline of monitoring.tasks, `monitor-<pipeline>`."""
    resource = {"prefect.resource.id": workspace_resource()["prefect.resource.id"]}
    triggers = [
        DeploymentEventTrigger(name="new labelled batch", expect={BATCH_ARRIVED}, match=resource),
        DeploymentEventTrigger(name="drift detected", expect={DRIFT_DETECTED}, match=resource),
    ]
    monitors = [
        monitor.to_deployment(name=f"monitor-{name}", cron=params.monitoring.schedule, parameters={"task": name})
        for name in params.monitoring.tasks
    ]
    return [retrain.to_deployment(name="retrain", cron=params.orchestration.schedule, triggers=triggers), *monitors]


def batch_versions(folder: Path) -> dict[str, tuple[int, int]]:
    """Each batch file of the drop folder with its (size, modification time): a fixed copy dropped again counts as new."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in batch_files(folder)}


def watch_drop_folder(folder: Path, poll_seconds: float, stop: threading.Event) -> None:
    """Emit BATCH_ARRIVED for each batch file that appears or changes; what was there at start is not new."""
    seen = batch_versions(folder)
    while not stop.wait(poll_seconds):
        current = batch_versions(folder)
        for name in sorted(name for name, version in current.items() if seen.get(name) != version):
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
