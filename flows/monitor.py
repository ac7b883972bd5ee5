"""Monitor flow: score a pipeline's incoming text with its champion, store every prediction, plot
what it predicts per day, and check that text, with the answers `finetune serve` gave and logged to
the store, for drift against the champion's reference data. It only
orchestrates: the store, the drift statistics, the reference and the report are pipeline/monitoring/.

    python -m flows.monitor --pipeline intents --input FILE   # once, on a csv with columns timestamp,text
    python -m flows.monitor --pipeline intents                # every batch and served answer for intents not checked yet

Each pipeline of `monitoring.pipelines` is monitored on its own: its batches (pipeline/monitoring/store.py),
its report reports/monitor/<pipeline>.json with its plots in reports/monitor/<pipeline>/. All
pipelines share one prediction store, each row marked with its pipeline. Runs overlap safely: one
run per pipeline at a time (a lock), each batch claimed before it is scored, each row stored once.
On drift, an event triggers the pipeline's retrain deployment and the texts the champion is least sure about go to data/to_label/
for labelling.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path
from uuid import NAMESPACE_URL, uuid5

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import Engine

from flows.events import DRIFT_DETECTED, SENTIMENT_ALERT, emit, scope_id
from flows.pool import require_shared_registry
from flows.workspaces import latest_outputs
from pipeline import tracking
from pipeline.errors import ConfigError
from pipeline.locks import limit_name, shared_lock
from pipeline.models import use_all_cores
from pipeline.monitoring.alerts import find_alerts, mark_sent, unsent
from pipeline.monitoring.drift import fired, how_far, measure_drift, observations
from pipeline.monitoring.entities import entity_index, read_aliases, tag_batches, untagged
from pipeline.monitoring.page import write_desk
from pipeline.monitoring.reference import reference
from pipeline.monitoring.report import report_path, summary_markdown, write_daily
from pipeline.monitoring.store import (
    batch_folders,
    batch_name,
    claimed,
    daily_counts,
    local_folder,
    new_batches,
    new_served,
    open_store,
    read_batch,
    store,
    stored_rows,
)
from pipeline.params import AlertConfig, MonitoringConfig, Params, pipeline_option
from pipeline.records import save_json
from pipeline.registry import champion_uri, champion_version, load_registered, registered_version
from pipeline.tasks import Task, get_task, load_params
from pipeline.techniques.active_learning import not_yet_asked, rank, write_queue


def first_pipeline(settings: MonitoringConfig) -> str:
    """The first pipeline of monitoring.pipelines: the one monitored before there were several."""
    if not settings.pipelines:
        raise ConfigError("params.yaml: 'monitoring.pipelines' lists no pipeline to monitor (e.g. pipelines: [sentiment])")
    return settings.pipelines[0]


def monitor_lock(pipeline: str, settings: MonitoringConfig) -> tuple[str, AbstractContextManager]:
    """(what it is, the lock) that one pipeline's monitor runs take, one at a time: beside a SQLite store,
    else shared by every process writing to the database server."""
    return shared_lock(limit_name("monitor", pipeline), local_folder(settings.db), settings.db)


@flow(name="monitor", log_prints=True)
def monitor(input: str | None = None, pipeline: str | None = None) -> dict:
    """Check a pipeline's new text (drop-folder batches and served answers) against its champion's
    reference, store it, report per day and drift; on drift, ask for a retrain."""
    params = load_params()
    require_shared_registry()  # the champion it checks against is the pool's
    settings = params.monitoring
    pipeline = pipeline or first_pipeline(settings)
    task = get_task(pipeline, params.pipeline(pipeline))
    if task.counts is None:
        raise ConfigError(f"params.yaml: the monitor watches pipelines whose predictions count labels or entity types; "
                          f"'{pipeline}' is a {task.config.type} pipeline")
    engine = open_store(settings.db, (settings.pipelines or [pipeline])[0])
    what, lock = monitor_lock(pipeline, settings)
    print(f"monitor[{pipeline}]: waiting for {what}", flush=True)
    with lock:
        if input:  # a file named by hand is scored whatever the store holds; rows stored before are not stored again
            return check(task, params, engine, [Path(input)], [])
        files = {batch_name(path, settings): path for path in new_batches(settings, pipeline, engine)}
        with claimed(engine, pipeline, [*files, *new_served(engine, pipeline)]) as names:
            return check(task, params, engine, [files[n] for n in names if n in files], [n for n in names if n not in files])


def check(task: Task, params: Params, engine: Engine, files: list[Path], served: list[str]) -> dict:
    """Score the files' text with the champion and store it; with the served answers the champion gave,
    report per day and drift. The batches are marked done either way."""
    settings, pipeline = params.monitoring, task.pipeline
    rows = [row for path in files for row in read_batch(path, batch_name(path, settings))]
    answered = stored_rows(engine, pipeline, served, task.counts.several)
    names = [batch_name(path, settings) for path in files] + served
    if not rows and not answered:
        print(f"monitor[{pipeline}]: no new text in {', '.join(map(str, files or batch_folders(settings, pipeline)))} "
              "and no new served answers")
        store(engine, pipeline, [], [], "", names)  # empty, but seen: not claimed again
        watch_entities(params, engine, pipeline)  # batches scored before the tagger had a champion
        return {}

    use_all_cores()
    experiment_id = tracking.configure(params.tracking.experiment)
    name = task.config.registry.name
    champion = registered_version(champion_uri(name))
    version = str(champion.version)
    model, tokenizer = load_registered(task, f"models:/{name}/{version}")  # pinned: the alias may move meanwhile
    observed = observations(task, task.predict(model, tokenizer, rows)) if rows else []
    added = store(engine, pipeline, rows, observed, version, names)
    by_champion = [(row, observation) for row, observation, answered_by in answered if answered_by == version]
    print(f"monitor[{pipeline}]: {len(rows)} texts of {len(files)} batch(es) scored by {name} v{version}, {added} stored "
          f"({len(rows) - added} stored before); {len(answered)} served answers, {len(by_champion)} of them by v{version}")
    texts = [r["text"] for r in rows] + [row["text"] for row, _ in by_champion]  # other versions' answers: not this reference's
    observed += [observation for _, observation in by_champion]
    if not texts:
        return {}

    ref = reference(task, model, tokenizer, champion, latest_outputs(pipeline))
    shift = task.counts.shift
    drift = measure_drift(ref, texts, observed, settings, shift)
    alarm = fired(drift, settings)
    report = {
        "pipeline": pipeline, "model": name, "model_version": version, "texts": len(texts), "batches": [str(b) for b in files],
        "served_texts": len(by_champion), "served_batches": len(served), "reference_data_hash": ref["data_hash"],
        "drift_detected": bool(alarm), "alarm": [how_far(figure, drift[figure]) for figure in alarm], "drift": drift,
    }
    plots = write_daily(report, daily_counts(engine, pipeline, task.counts.several), task, version)
    report.update(watch_entities(params, engine, pipeline))
    plots += [Path(report["desk"])] if "desk" in report else []
    if report["drift_detected"]:
        picks = task.config.active_learning  # the same ranking as `finetune select`
        unasked = not_yet_asked(list(dict.fromkeys(texts)), task, latest_outputs(pipeline))  # none: every text asked about before
        report["labelling_queue"] = str(write_queue(rank(task, model, tokenizer, unasked, picks.strategy, settings.queue_size, picks.diversity,
                                                         picks.seed), task.pipeline)) if unasked else None
    save_json(report_path(pipeline), report)
    publish(report, plots, experiment_id, shift)
    return report


def watch_entities(params: Params, engine: Engine, pipeline: str) -> dict:
    """When monitoring.entities reads this pipeline: tag the batches not tagged yet, send the alerts
    and write the desk page. Returns the report's part: the last window's 10 most mentioned entities,
    the newest window's alerts and the page's path."""
    entities = params.monitoring.entities
    if entities is None or pipeline not in entities.pipelines:
        return {}
    aliases = read_aliases(entities.aliases)
    tag_entities(params, engine, pipeline)
    part: dict = {}
    if top := entity_index(engine, pipeline, params.pipeline(pipeline).validate.labels, aliases, entities.window_days, top=10):
        part["entities"] = {"window_days": entities.window_days, "top": top}
    if entities.alert is not None:
        part["alerts"] = send_alerts(engine, pipeline, aliases, entities.alert)
    if page := write_desk(engine, params, pipeline, aliases):
        part["desk"] = str(page)
    return part


def tag_entities(params: Params, engine: Engine, pipeline: str) -> None:
    """The tagger's champion finds the entities in every batch of the pipeline not tagged yet."""
    import mlflow

    entities = params.monitoring.entities
    if not untagged(engine, pipeline):
        return
    tagger = get_task(entities.tagger, params.pipeline(entities.tagger))
    name = tagger.config.registry.name
    tracking.configure(params.tracking.experiment)
    champion = champion_version(mlflow.MlflowClient(), name)
    if champion is None:
        print(f"monitor[{pipeline}]: entities not tagged: the {entities.tagger} pipeline has no champion yet "
              f"({champion_uri(name)}); the batches are tagged once it has one")
        return
    model, tokenizer = load_registered(tagger, f"models:/{name}/{champion.version}")
    batches, texts, added = tag_batches(engine, pipeline, entities.tagger, str(champion.version),
                                        lambda batch: tagger.predict(model, tokenizer, [{"text": text} for text in batch]),
                                        entities.types)
    print(f"monitor[{pipeline}]: {name} v{champion.version} read {texts} texts of {batches} batch(es): {added} mentions "
          f"of {', '.join(entities.types)} stored")


def send_alerts(engine: Engine, pipeline: str, aliases: dict[str, str], rule: AlertConfig) -> list[dict]:
    """Apply the alert rule to the pipeline's newest window; emit a finetune.sentiment.alert event for each
    alert not sent yet, this run's or an earlier one's. Returns the alerts of the newest window."""
    found = find_alerts(engine, pipeline, aliases, rule)
    for alert in unsent(engine, pipeline, found):
        event_id = uuid5(NAMESPACE_URL, f"{SENTIMENT_ALERT}/{scope_id()}/{pipeline}/{alert['key']}/{'/'.join(alert['window'])}")
        emit(SENTIMENT_ALERT, pipeline, {k: v for k, v in alert.items() if k != "key"}, id=event_id)
        mark_sent(engine, pipeline, alert)
        get_run_logger().warning("%s: negative news about %s from %s to %s: %d of %d texts negative (%.0f%%, baseline %.0f%% of the %s), "
                                 "p %.1e", pipeline, alert["entity"], *alert["window"], alert["negative"], alert["texts"],
                                 100 * alert["share"], 100 * alert["baseline"]["share"], alert["baseline"]["of"], alert["pvalue"])
    return found


def publish(report: dict, plots: list[Path], experiment_id: str, shift: str) -> None:
    """The report into an MLflow run and a Prefect artifact; on drift, the event that asks for a retrain."""
    import mlflow

    pipeline, version, drift = report["pipeline"], report["model_version"], report["drift"]
    tags = {"monitor": "true", "task": pipeline, "model_name": report["model"], "model_version": version}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{pipeline}", tags=tags):
        mlflow.log_metrics({
            f"{shift}_pvalue": drift[shift]["pvalue"], f"{shift}_distance": drift[shift]["distance"], "confidence_drop": drift["confidence"]["drop"],
            "oov_increase": drift["oov_rate"]["increase"], "drift_detected": float(report["drift_detected"]),
        })
        for path in (report_path(pipeline), *plots):
            mlflow.log_artifact(str(path))
    create_markdown_artifact(key=f"monitor-{pipeline}", markdown=summary_markdown(report), description=f"drift and daily figures of {pipeline}")
    if report["drift_detected"]:
        emit(DRIFT_DETECTED, pipeline, {"model_version": version, "report": str(report_path(pipeline)),
                                        "queue": report["labelling_queue"]})
        queued = f"texts queued in {report['labelling_queue']}" if report["labelling_queue"] else "each text labelled or queued before"
        get_run_logger().warning("%s: drift detected (%s): retrain requested, %s", pipeline, "; ".join(report["alarm"]), queued)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Score a pipeline's text with its champion and check for drift.")
    pipeline_option(parser, "the pipeline (default: the first of monitoring.pipelines)")
    parser.add_argument("--input", help="a csv with columns timestamp,text (default: the pipeline's new batches in monitoring.input)")
    arguments = parser.parse_args()
    monitor(arguments.input, arguments.pipeline)
