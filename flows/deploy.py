"""`finetune deploy`: serve each pipeline's retrain and monitor flows on their cron schedules and on events.

Each pipeline of `pipelines` has its own retrain deployment, `retrain-<pipeline>` (parameter
`pipeline`), which runs nightly (`orchestration.schedule`) and whenever one of two events names
its pipeline in this scope (this checkout, or the work pool): `finetune.batch.arrived` (emitted
here when new files land in the pipeline's `data.incoming`; the files of one settle window make
one event) and `finetune.drift.detected` (emitted by the pipeline's monitor flow). Each pipeline of
`monitoring.pipelines` has its own monitor deployment, `monitor-<pipeline>`, on `monitoring.schedule`.
Schedules and triggers are stored with the deployments on the Prefect server, so they survive a
restart of this process.

Without a pool, this process serves the deployments: their flow runs run here. With `--pool NAME`, it
registers them in that Prefect work pool and then only watches the drop folders: any machine with a
clone of the project runs them, `FINETUNE_CHECKOUT=/path/to/clone prefect worker start --pool NAME`
(flows/pool.py), each flow run in a pipeline workspace of that clone, filled from the DVC remote.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.types.entrypoint import EntrypointType

from flows.events import BATCH_ARRIVED, DRIFT_DETECTED, PIPELINE_LABEL, emit, scope_id
from flows.monitor import monitor
from flows.pool import POOL_ENV, enter_checkout
from flows.retrain import retrain
from pipeline.errors import ServiceError, UsageError
from pipeline.params import Params
from pipeline.readers import batch_files

# Flows are found as modules of the installed package (`make setup`), not as files relative to the
# deploying checkout: a worker's clone lies elsewhere.
BY_MODULE = EntrypointType.MODULE_PATH


def retrain_deployment(pipeline: str, schedule: str) -> RunnerDeployment:
    """`retrain-<pipeline>`: the pipeline's retrain on the cron schedule, and on a new batch or drift in that pipeline."""
    about = {"prefect.resource.id": scope_id(), PIPELINE_LABEL: pipeline}
    triggers = [
        DeploymentEventTrigger(name=f"new labelled batch for {pipeline}", expect={BATCH_ARRIVED}, match=about),
        DeploymentEventTrigger(name=f"drift detected in {pipeline}", expect={DRIFT_DETECTED}, match=about),
    ]
    return retrain.to_deployment(name=f"retrain-{pipeline}", cron=schedule, parameters={"pipeline": pipeline}, triggers=triggers,
                                 entrypoint_type=BY_MODULE)


def build_deployments(params: Params) -> list[RunnerDeployment]:
    """A retrain deployment per pipeline of `pipelines`, then a monitor deployment (cron) per pipeline of monitoring.pipelines."""
    retrains = [retrain_deployment(name, params.orchestration.schedule) for name in params.pipelines]
    monitors = [
        monitor.to_deployment(name=f"monitor-{name}", cron=params.monitoring.schedule, parameters={"pipeline": name}, entrypoint_type=BY_MODULE)
        for name in params.monitoring.pipelines
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
    """The `data.incoming` folder of each pipeline of `pipelines` (watched even before it exists)."""
    return [DropFolder(name, Path(params.pipeline(name).data.incoming)) for name in params.pipelines]


def check_pool(pool: str) -> None:
    """Refuse, in one line, a work pool the Prefect server does not have, or no Prefect server at all."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # Prefect would start a temporary server here, which no worker can reach
        raise UsageError(f"work pool '{pool}': PREFECT_API_URL is not set, so there is no Prefect server that workers on "
                         "other machines reach: set it to your server's API (`prefect config set PREFECT_API_URL=...`)")
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise UsageError(f"the Prefect server at {client.api_url} has no work pool '{pool}': create it with "
                             f"`prefect work-pool create {pool} --type process`, then deploy again") from None


def register_in_pool(deployments: list[RunnerDeployment], pool: str, heartbeat_seconds: int) -> list[UUID]:
    """Register the deployments (schedules and triggers included) in the work pool, their flow runs to run in
    the worker's clone with FINETUNE_POOL set and a heartbeat; their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import PrefectException

    in_checkout = [{f"{enter_checkout.__module__}.{enter_checkout.__name__}": {}}]
    ids = []
    with get_client(sync_client=True) as client:
        for deployment in deployments:
            deployment.job_variables = {"env": {POOL_ENV: pool, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds)}}
            try:
                ids.append(deployment.apply(work_pool_name=pool))
            except PrefectException as exc:
                raise ServiceError(f"registering {deployment.full_name} in work pool '{pool}' failed: {exc}") from None
            # Not the deploying checkout's path: each worker runs in its own clone.
            client.update_deployment(ids[-1], DeploymentUpdate(path=None, pull_steps=in_checkout))
            print(f"{deployment.full_name}: registered in work pool '{pool}'", flush=True)
    return ids


def crash_silent_runs(pool: str, deployment_ids: list[UUID], heartbeat_seconds: int) -> None:
    """(Re)create the automation that marks a flow run of these deployments Crashed once three heartbeats in a
    row have not come (its worker or machine died): Prefect's recipe for zombie flow runs. Its slot of the
    pipeline's limit, no longer renewed, is then freed, and the next run goes to a live worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    name = f"finetune: crash silent flow runs of work pool {pool}"
    silent = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.*"},  # the next heartbeat, or any change of state
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "deployment", "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids]},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=3 * heartbeat_seconds),
    )
    crash = ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {3 * heartbeat_seconds} s: its worker stopped")
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(name):
            client.delete_automation(old.id)
        client.create_automation(AutomationCore(name=name, trigger=silent, actions=[crash]))


def deploy(params: Params, pool: str | None = None) -> None:
    """Until interrupted: serve the deployments here, or (with a pool) register them in the work pool for its
    workers; either way watch every pipeline's drop folder."""
    settings = params.orchestration
    stop = threading.Event()
    watching = (drop_folders(params), settings.poll_seconds, settings.settle_seconds, stop)
    if pool:
        check_pool(pool)
        os.environ[POOL_ENV] = pool  # this process's events (new batches) are about the pool's pipelines now
        ids = register_in_pool(build_deployments(params), pool, settings.heartbeat_seconds)
        crash_silent_runs(pool, ids, settings.heartbeat_seconds)
        print(f"watching the drop folders for work pool '{pool}'; its workers: "
              f"`FINETUNE_CHECKOUT=/path/to/clone prefect worker start --pool {pool}`", flush=True)
        watch_drop_folders(*watching)  # until Ctrl-C
        return
    threading.Thread(target=watch_drop_folders, args=watching, daemon=True).start()
    try:
        serve(*build_deployments(params))
    finally:
        stop.set()
