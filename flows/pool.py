"""What a flow run of a work pool's deployment needs (`finetune deploy --pool NAME`): to run in the worker's
clone of this project, and a registry that every worker shares.

A Prefect worker on any machine (`prefect worker start --pool NAME`) starts each flow run in a temporary
folder; the deployments' pull step, `enter_checkout`, moves it into the clone named by the worker's
FINETUNE_CHECKOUT, where the flow reads params.yaml and makes its pipeline's workspace. The deployments
set FINETUNE_POOL in their flow runs' environment, which is how a flow run knows it runs in a pool.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import tracking
from pipeline.errors import ConfigError, UsageError

POOL_ENV = "FINETUNE_POOL"  # the work pool the deployments are in: set in their flow runs and by `finetune deploy --pool`
CHECKOUT_ENV = "FINETUNE_CHECKOUT"  # a worker's clone of this project, where its flow runs run


def current_pool() -> str | None:
    """The work pool this process acts for, or None outside one."""
    return os.environ.get(POOL_ENV) or None


def enter_checkout() -> dict[str, str]:
    """The deployments' pull step: the worker's clone, $FINETUNE_CHECKOUT, as the directory the flow runs in."""
    checkout = os.environ.get(CHECKOUT_ENV)
    if not checkout:
        raise UsageError(f"{CHECKOUT_ENV} is not set on this worker, so its flow runs do not know which clone of the "
                         f"project to run in: start it as `{CHECKOUT_ENV}=/path/to/clone prefect worker start --pool NAME`")
    path = Path(checkout).expanduser().resolve()
    missing = [name for name in ("params.yaml", "dvc.yaml") if not (path / name).is_file()]
    if missing:
        raise UsageError(f"{CHECKOUT_ENV}={checkout}: no {' and no '.join(missing)} there: point it at a clone of the "
                         "project (git clone, then `make setup`)")
    return {"directory": str(path)}


def require_shared_registry() -> None:
    """In a work pool, refuse a tracking store on this machine's disk: each worker would register and compare
    against a registry of its own."""
    pool, folder = current_pool(), tracking.local_store_folder()
    if pool and folder is not None:
        raise ConfigError(f"work pool '{pool}': the MLflow store here is {folder} on this worker's disk, so each worker "
                          "would promote against a champion of its own: set MLFLOW_TRACKING_URI to the team's tracking "
                          "server in every worker's environment (docs/scale.md)")
