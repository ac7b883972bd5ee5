"""`finetune deploy`: serve each pipeline's retrain and monitor flows on their cron schedules and on events.

Each pipeline of `tasks` has its own retrain deployment, `retrain-<pipeline>` (parameter
`pipeline`), which runs nightly (`orchestration.schedule`) and whenever one of two events names
its pipeline in this workspace: `finetune.batch.arrived` (emitted here when new files land in the
pipeline's `data.incoming`; the files of one settle window make one event) and
`finetune.drift.detected` (emitted by the pipeline's monitor flow). Each pipeline of
`monitoring.tasks` has its own monitor deployment, `monitor-<pipeline>`, on `monitoring.schedule`.
Schedules and triggers are stored with the deployments on the Prefect server, so they survive a
restart of this process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.events import BATCH_ARRIVED, DRIFT_DETECTED, PIPELINE_LABEL, emit, workspace_id
from flows.monitor import monitor
from flows.retrain import retrain
from pipeline.params import Params
from pipeline.readers import batch_files


def retrain_deployment(pipeline: str, schedule: str) -> RunnerDeployment:
    """`retrain-<pipeline>`: the pipeline's retrain on the cron schedule, and on a new batch or drift in that pipeline."""
    about = {"prefect.resource.id": workspace_id(), PIPELINE_LABEL: pipeline}
    triggers = [
        DeploymentEventTrigger(name=f"new labelled batch for {pipeline}", expect={BATCH_ARRIVED}, match=about),
        DeploymentEventTrigger(name=f"drift detected in {pipeline}", expect={DRIFT_DETECTED}, match=about),
    ]
    return retrain.to_deployment(name=f"retrain-{pipeline}", cron=schedule, parameters={"pipeline": pipeline}, triggers=triggers)


def build_deployments(params: Params) -> list[RunnerDeployment]:
    """A retrain deployment per pipeline of `tasks`, then a monitor deployment (cron) per pipeline of monitoring.tasks."""
    retrains = [retrain_deployment(name, params.orchestration.schedule) for name in params.tasks]
    monitors = [
        monitor.to_deployment(name=f"monitor-{name}", cron=params.monitoring.schedule, parameters={"task": name})
        for name in params.monitoring.tasks
    ]
    return [*retrains, *monitors]


def batch_versions(folder: Path) -> dict[str, tuple[int, int]]:
    """Each batch file of the drop folder with its (size, modification time): a fixed copy dropped again counts as new."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in batch_files(folder)}


@dataclass
class DropFolder:
    """A pipeline's drop folder as the watcher sees it: the batches known, and those new in the open settle window."""

    pipeline: str
    folder: Path
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    window_opened: float | None = None

    def __post_init__(self) -> None:
        self.seen = batch_versions(self.folder)  # what is there at start is not new

    def poll(self, now: float, settle_seconds: float) -> list[str]:
        """Note new or changed batches; when the settle window (opened by the first of them) has passed, return
        them all, once."""
        current = batch_versions(self.folder)
        changed = {name for name, version in current.items() if self.seen.get(name) != version}
        self.seen = current
        if changed and self.window_opened is None:
            self.window_opened = now
        self.pending |= changed
        if self.window_opened is None or now - self.window_opened < settle_seconds:
            return []
        arrived, self.pending, self.window_opened = sorted(self.pending), set(), None
        return [str(self.folder / name) for name in arrived]


def watch_drop_folders(folders: list[DropFolder], poll_seconds: float, settle_seconds: float, stop: threading.Event) -> None:
    """Emit one BATCH_ARRIVED per pipeline and settle window, naming the files that arrived in it."""
    while not stop.wait(poll_seconds):
        for drop in folders:
            files = drop.poll(time.monotonic(), settle_seconds)
            if files:
                emit(BATCH_ARRIVED, drop.pipeline, {"files": files})


def drop_folders(params: Params) -> list[DropFolder]:
    """The `data.incoming` folder of each pipeline of `tasks` (watched even before it exists)."""
    return [DropFolder(name, Path(params.task(name).data.incoming)) for name in params.tasks]


def deploy(params: Params) -> None:
    """Watch every pipeline's drop folder and serve the deployments until interrupted."""
    stop = threading.Event()
    settings = params.orchestration
    watcher = threading.Thread(
        target=watch_drop_folders, args=(drop_folders(params), settings.poll_seconds, settings.settle_seconds, stop), daemon=True)
    watcher.start()
    try:
        serve(*build_deployments(params))
    finally:
        stop.set()
