"""The Prefect events of this project, each about one pipeline in this scope (a checkout or a work pool), and how they are emitted.

- `finetune.batch.arrived`: new or changed files in a pipeline's `data.incoming` (`finetune deploy`'s
  watcher; the files of one settle window in one event);
- `finetune.batch.rejected`: a drop-folder batch the collect stage set aside (the retrain flow);
- `finetune.drift.detected`: the monitor flow found drift in a pipeline;
- `finetune.sentiment.alert`: negative news about one entity spiked in a pipeline's texts (the
  monitor flow; pipeline/monitoring/alerts.py), one event per entity and window.

The event's resource carries the pipeline as the label `finetune.pipeline`: each pipeline's retrain
deployment listens for the first and the last about its own pipeline only. Its id is the scope the
deployments were registered for: this checkout, or the work pool (`finetune deploy --pool`), whose flow
runs emit from other clones on other machines.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect.events import emit_event

from flows.pool import current_pool

BATCH_ARRIVED = "finetune.batch.arrived"
BATCH_REJECTED = "finetune.batch.rejected"
DRIFT_DETECTED = "finetune.drift.detected"
SENTIMENT_ALERT = "finetune.sentiment.alert"
PIPELINE_LABEL = "finetune.pipeline"


def scope_id() -> str:
    """What the events are about as a Prefect resource id: the work pool (the same on every worker), else this
    checkout, so two checkouts never trigger each other."""
    pool = current_pool()
    return f"finetune.pool.{pool}" if pool else f"finetune.workspace.{Path.cwd().resolve()}"


def pipeline_resource(pipeline: str) -> dict[str, str]:
    """The Prefect resource events are about: one pipeline in this scope."""
    return {"prefect.resource.id": scope_id(), "prefect.resource.name": Path.cwd().name, PIPELINE_LABEL: pipeline}


def emit(event: str, pipeline: str, payload: dict, id: UUID | None = None) -> None:
    """Emit a Prefect event about a pipeline in this scope (the payload names it too, for readers of the event feed);
    an `id` of its own makes a second emission of the same event one event."""
    emit_event(event=event, resource=pipeline_resource(pipeline), payload={"pipeline": pipeline, **payload}, id=id)
