"""Locks that runs which overlap take: a file lock (processes of one machine) and a Prefect global
concurrency limit (every process that talks to one Prefect server, on any machine); and the check
that a configured Prefect server answers.

A Prefect limit is created with one slot the first time it is used and never reset, so an
operator's change (more slots, or deactivating it) stays. Its slot is held under a lease the
holder keeps renewing: a killed holder stops renewing and the server frees the slot.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import tempfile
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import ServiceError

LEASE_SECONDS = 60  # a killed holder's slot is freed by the Prefect server this long after its last renewal


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive lock on a file (released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def limit_name(*parts: str) -> str:
    """A Prefect limit (or lock file) name from parts such as a registered model's name: safe characters only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(("finetune", *parts)))


def prefect_api_configured() -> bool:
    """Whether a Prefect server is configured (PREFECT_API_URL, in the environment or the active profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def check_prefect_api() -> None:
    """Fail with one line (ServiceError) when a Prefect API is configured and does not answer; with none
    configured, Prefect starts a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
    except Exception as exc:  # noqa: BLE001 - the client checks the server's version on opening, and fails there
        problem = exc
    if problem is not None:
        raise ServiceError(f"the Prefect API at {url} does not answer ({problem}): start the server (`prefect server start`) "
                           "or point PREFECT_API_URL at one that runs")


def ensure_limit(name: str) -> str:
    """Create the Prefect global concurrency limit `name` with one slot unless it exists; returns the name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)  # read first: a refused create logs an error on the server
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it a moment ago
                pass
    return name


@contextmanager
def prefect_limit(name: str) -> Iterator[None]:
    """Wait for, then hold, a slot of the Prefect global concurrency limit `name` (created if missing)."""
    from prefect.concurrency.sync import concurrency

    with concurrency(ensure_limit(name), occupy=1, lease_duration=LEASE_SECONDS, strict=True):
        yield


def shared_lock(name: str, folder: Path | None, server: str) -> tuple[str, AbstractContextManager]:
    """(what it is, the lock `name`) that every process writing one store takes. A store on this disk
    (`folder`): a file lock in it, whoever writes it is on this machine, a command typed by hand
    included. A store on a server (`server`, its address): the Prefect global concurrency limit `name`
    when a Prefect API is configured (every machine), else a file lock in the temp folder, one per
    server (this machine only)."""
    if folder is None and prefect_api_configured():
        return f"the Prefect global concurrency limit {name}", prefect_limit(name)
    if folder is None:
        folder = Path(tempfile.gettempdir()) / f"finetune-locks-{hashlib.sha256(server.encode()).hexdigest()[:12]}"
    path = folder / f"{name}.lock"
    return f"the lock {path}", file_lock(path)
