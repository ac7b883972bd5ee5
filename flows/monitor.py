"""Monitor flow: score a pipeline's incoming text with its champion, store every prediction, plot
what it predicts per day, and check for drift against the champion's reference data. It only
orchestrates: the store, the drift statistics, the reference and the report are pipeline/monitoring/.

    python -m flows.monitor --task intents --input FILE   # once, on a csv with columns timestamp,text
    python -m flows.monitor --task intents                # every batch for intents not scored yet

Each pipeline of `monitoring.tasks` is monitored on its own: its batches (pipeline/monitoring/store.py),
its report reports/monitor/<pipeline>.json with its plots in reports/monitor/<pipeline>/. All
pipelines share one prediction store, each row marked with its pipeline. Runs overlap safely: one
run per pipeline at a time (a lock), each batch claimed before it is scored, each row stored once.
On drift, an event triggers
the pipeline's retrain deployment and the texts the champion is least sure about go to data/to_label/
for labelling.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import Engine

from flows.events import DRIFT_DETECTED, emit
from flows.workspaces import latest_outputs
from pipeline import tracking
from pipeline.errors import ConfigError
from pipeline.locks import limit_name, shared_lock
from pipeline.models import use_all_cores
from pipeline.monitoring.drift import MONITORED, is_tagger, measure_drift
from pipeline.monitoring.reference import reference
from pipeline.monitoring.report import report_path, summary_markdown, write_daily
from pipeline.monitoring.store import batch_folders, batch_name, claimed, daily_counts, new_batches, open_store, read_batch, store
from pipeline.params import MonitoringConfig, Params
from pipeline.records import save_json
from pipeline.registry import champion_uri, load_registered, registered_version
from pipeline.tasks import get_task, load_params
from pipeline.tasks.base import Task
from pipeline.techniques.active_learning import rank, write_queue


def first_pipeline(settings: MonitoringConfig) -> str:
    """The first pipeline of monitoring.tasks: the one monitored before there were several."""
    if not settings.tasks:
        raise ConfigError("params.yaml: 'monitoring.tasks' lists no pipeline to monitor (e.g. tasks: [sentiment])")
    return settings.tasks[0]


def monitor_lock(pipeline: str, settings: MonitoringConfig) -> tuple[str, AbstractContextManager]:
    """(what it is, the lock) that one pipeline's monitor runs take, one at a time: beside a SQLite store,
    else shared by every process writing to the database server."""
    local = None if "://" in settings.db else Path(settings.db).parent
    return shared_lock(limit_name("monitor", pipeline), local, settings.db)


@flow(name="monitor", log_prints=True)
def monitor(input: str | None = None, task: str | None = None) -> dict:
    """Score a pipeline's new text with its champion, store it, report per day and drift; on drift, ask for a retrain."""
    params = load_params()
    settings = params.monitoring
    pipeline = task or first_pipeline(settings)
    task = get_task(pipeline, params.task(pipeline))
    if task.pipeline_task not in MONITORED:
        raise ConfigError(f"params.yaml: the monitor watches text and token classification pipelines; '{pipeline}' is {task.config.type}")
    engine = open_store(settings.db, (settings.tasks or [pipeline])[0])
    what, lock = monitor_lock(pipeline, settings)
    print(f"monitor[{pipeline}]: waiting for {what}", flush=True)
    with lock:
        if input:  # a file named by hand is scored whatever the store holds; rows stored before are not stored again
            return score_and_report(task, params, engine, [Path(input)])
        with claimed(engine, pipeline, new_batches(settings, pipeline, engine), settings) as batches:
            return score_and_report(task, params, engine, batches)


def score_and_report(task: Task, params: Params, engine: Engine, batches: list[Path]) -> dict:
    """Score the batches with the champion, store them, report per day and drift; on drift, ask for a retrain."""
    import mlflow

    logger = get_run_logger()
    settings, pipeline = params.monitoring, task.name
    rows = [row for batch in batches for row in read_batch(batch, batch_name(batch, settings))]
    if not rows:
        logger.info("%s: no new text in %s", pipeline, ", ".join(map(str, batches or batch_folders(settings, pipeline))))
        if batches:
            store(engine, pipeline, [], [], "", [batch_name(b, settings) for b in batches])  # empty, but seen: not claimed again
        return {}

    use_all_cores()
    experiment_id = tracking.configure(params.tracking.experiment)
    name = task.config.registry.name
    champion = registered_version(champion_uri(name))
    version = str(champion.version)
    model, tokenizer = load_registered(task, f"models:/{name}/{version}")  # pinned: the alias may move meanwhile
    predictions = task.predict(model, tokenizer, rows)
    added = store(engine, pipeline, rows, predictions, version, [batch_name(b, settings) for b in batches])
    print(f"monitor[{pipeline}]: {len(rows)} texts of {len(batches)} batch(es) scored by {name} v{version}, "
          f"{added} stored ({len(rows) - added} stored before)")

    ref = reference(task, model, tokenizer, champion, latest_outputs(pipeline))
    shift = MONITORED[task.pipeline_task]
    drift = measure_drift(ref, [r["text"] for r in rows], predictions, settings, shift)
    report = {
        "pipeline": pipeline, "model": name, "model_version": version, "texts": len(rows), "batches": [str(b) for b in batches],
        "reference_data_hash": ref["data_hash"], "drift_detected": any(d["drifted"] for d in drift.values()), "drift": drift,
    }
    plots = write_daily(report, daily_counts(engine, pipeline, is_tagger(task)), task, version)
    if report["drift_detected"]:
        picks = task.config.active_learning  # the same ranking as `finetune select`
        queued = rank(task, model, tokenizer, [r["text"] for r in rows], picks.strategy, settings.queue_size, picks.diversity, picks.seed)
        report["labelling_queue"] = str(write_queue(queued, task.name))
    save_json(report_path(pipeline), report)

    tags = {"monitor": "true", "task": pipeline, "model_name": name, "model_version": version}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{pipeline}", tags=tags):
        mlflow.log_metrics({
            f"{shift}_pvalue": drift[shift]["pvalue"], "confidence_drop": drift["confidence"]["drop"],
            "oov_increase": drift["oov_rate"]["increase"], "drift_detected": float(report["drift_detected"]),
        })
        for path in (report_path(pipeline), *plots):
            mlflow.log_artifact(str(path))
    create_markdown_artifact(key=f"monitor-{pipeline}", markdown=summary_markdown(report), description=f"drift and daily figures of {pipeline}")

    if report["drift_detected"]:
        emit(DRIFT_DETECTED, pipeline, {"model_version": version, "report": str(report_path(pipeline)),
                                        "queue": report["labelling_queue"]})
        logger.warning("%s: drift detected: retrain requested, texts queued in %s", pipeline, report["labelling_queue"])
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Score a pipeline's text with its champion and check for drift.")
    parser.add_argument("--task", help="the pipeline (default: the first of monitoring.tasks)")
    parser.add_argument("--input", help="a csv with columns timestamp,text (default: the pipeline's new batches in monitoring.input)")
    arguments = parser.parse_args()
    monitor(arguments.input, arguments.task)
