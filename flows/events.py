"""The Prefect events of this project, each about this workspace, and how they are emitted.

- `finetune.batch.arrived`: a new or changed file in the drop folder (`finetune deploy`'s watcher);
- `finetune.batch.rejected`: a drop-folder batch the collect stage set aside (the retrain flow);
- `finetune.drift.detected`: the monitor flow found drift in a pipeline (named in the payload's `task`).

The retrain deployment's triggers listen for the first and the last.
"""

from __future__ import annotations

from pathlib import Path

from prefect.events import emit_event

BATCH_ARRIVED = "finetune.batch.arrived"
BATCH_REJECTED = "finetune.batch.rejected"
DRIFT_DETECTED = "finetune.drift.detected"


def workspace_resource() -> dict[str, str]:
    """The Prefect resource events are about: this workspace, so two checkouts never trigger each other."""
    return {"prefect.resource.id": f"finetune.workspace.{Path.cwd().resolve()}", "prefect.resource.name": Path.cwd().name}


def emit(event: str, payload: dict) -> None:
    """Emit a Prefect event about this workspace."""
    emit_event(event=event, resource=workspace_resource(), payload=payload)
