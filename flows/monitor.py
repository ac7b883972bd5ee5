"""Monitor flow: score a pipeline's incoming text with its champion, store every prediction, plot
what it predicts per day, and check for drift against the champion's reference data.

    python -m flows.monitor --task intents --input FILE   # once, on a csv with columns timestamp,text
    python -m flows.monitor --task intents                # every batch for intents not scored yet

Each pipeline of `monitoring.tasks` is monitored on its own: its batches are the csv files in
`monitoring.input/<pipeline>/` (and, for the first pipeline of monitoring.tasks, those directly in
`monitoring.input`, where they lay when only one pipeline was monitored), its report is
reports/monitor/<pipeline>.json with its plots in reports/monitor/<pipeline>/. All pipelines
share one prediction store, each row marked with its pipeline.

What is counted per prediction is its label (text classification) or the type of each entity it
found (token classification). Per day the report gives the sentiment index (share positive minus
share negative) for label sets with both, and otherwise the share of each label or entity type.

The reference is what the champion sees on in-distribution text it was not trained on: the
validation split (examples never move between splits, so no champion trained on them). It holds
the champion's counts (labels or entity types) and mean confidence there, the validation split's
rate of words unseen in the training split, and the training vocabulary; computed once per
champion version and cached under monitoring/reference/. On drift, an event triggers the retrain
deployment and the texts the champion is least sure about go to data/to_label/ for labelling.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.events import DRIFT_DETECTED, emit
from flows.workspaces import latest_outputs
from pipeline import tracking
from pipeline.errors import ConfigError, DataError
from pipeline.models import use_all_cores
from pipeline.params import MonitoringConfig
from pipeline.paths import TaskPaths
from pipeline.plots import label_shares_png, sentiment_index_html, sentiment_index_png
from pipeline.readers import read_file
from pipeline.records import Record, load_json, load_records, save_json
from pipeline.registry import CHAMPION, load_registered
from pipeline.tasks import get_task, load_params
from pipeline.tasks.base import Task
from pipeline.techniques.active_learning import rank, write_queue

REPORTS = Path("reports/monitor")  # <pipeline>.json, and the pipeline's plots in <pipeline>/
REFERENCES = Path("monitoring/reference")
MONITORED = {"text-classification": "label_shift", "token-classification": "entity_types"}  # what each kind's chi-square tests


def report_path(pipeline: str) -> Path:
    return REPORTS / f"{pipeline}.json"


def first_pipeline(settings: MonitoringConfig) -> str:
    """The first pipeline of monitoring.tasks: the one monitored before there were several."""
    if not settings.tasks:
        raise ConfigError("params.yaml: 'monitoring.tasks' lists no pipeline to monitor (e.g. tasks: [sentiment])")
    return settings.tasks[0]


def is_tagger(task: Task) -> bool:
    """Token classification: its predictions are entities, not one label."""
    return task.pipeline_task == "token-classification"


def counted(prediction: Record) -> list[str]:
    """What the monitor counts in a prediction: its label, or the type of each entity it found."""
    return [e["type"] for e in prediction["entities"]] if "entities" in prediction else [prediction["label"]]


def read_batch(path: Path, name: str) -> list[Record]:
    """Rows of a csv with columns timestamp,text (ISO 8601 timestamps; the date is their first 10 characters),
    each with the name of its batch."""
    rows = read_file(path, "csv", "utf-8")
    missing = {"timestamp", "text"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected timestamp,text)")
    return [{"timestamp": r["timestamp"], "text": r["text"], "batch": name} for r in rows if r["text"].strip()]


# the prediction store ----------------------------------------------------------------------------
PREDICTION_COLUMNS = "timestamp, text, label, score, model_version, batch, scored_at, pipeline"


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The column names of a table (none when it does not exist)."""
    return {column for _, column, *_ in db.execute(f"PRAGMA table_info({table})")}


def open_db(path: Path, first: str) -> sqlite3.Connection:
    """The prediction store. One from before pipelines were named is migrated in place: its rows and
    batches are given to `first`, the pipeline monitored then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("BEGIN")  # a migration happens whole or not at all
    db.execute(f"CREATE TABLE IF NOT EXISTS predictions ({PREDICTION_COLUMNS})")
    if "pipeline" not in columns(db, "predictions"):
        db.execute("ALTER TABLE predictions ADD COLUMN pipeline TEXT")
        db.execute("UPDATE predictions SET pipeline = ?", (first,))
    batch_columns = columns(db, "batches")
    old_batches = bool(batch_columns) and "pipeline" not in batch_columns  # keyed by the file name alone
    if old_batches:
        db.execute("ALTER TABLE batches RENAME TO batches_before_pipelines")
    db.execute("CREATE TABLE IF NOT EXISTS batches (pipeline TEXT, name TEXT, scored_at TEXT, PRIMARY KEY (pipeline, name))")
    if old_batches:
        db.execute("INSERT INTO batches SELECT ?, name, scored_at FROM batches_before_pipelines", (first,))
        db.execute("DROP TABLE batches_before_pipelines")
    db.commit()
    return db


def batch_folders(settings: MonitoringConfig, pipeline: str) -> list[Path]:
    """Where a pipeline's batches land: monitoring.input/<pipeline>/, and monitoring.input itself for the first pipeline."""
    root = Path(settings.input)
    return [root / pipeline] + ([root] if settings.tasks[:1] == [pipeline] else [])


def batch_name(path: Path, settings: MonitoringConfig) -> str:
    """How the store names a batch: its path under monitoring.input (a file given elsewhere: its name)."""
    path, root = path.resolve(), Path(settings.input).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def new_batches(settings: MonitoringConfig, pipeline: str, db: sqlite3.Connection) -> list[Path]:
    """The pipeline's csv batches that no earlier run scored for it."""
    done = {name for (name,) in db.execute("SELECT name FROM batches WHERE pipeline = ?", (pipeline,))}
    found = [p for folder in batch_folders(settings, pipeline) if folder.is_dir() for p in folder.glob("*.csv")]
    return sorted(p for p in found if batch_name(p, settings) not in done)


def store(db: sqlite3.Connection, pipeline: str, rows: list[Record], predictions: list[Record], version: str, batches: list[str]) -> None:
    """Each prediction (label: the label, or the entity types in order, space-separated) and the batches scored."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    db.executemany(
        f"INSERT INTO predictions ({PREDICTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["timestamp"], r["text"], " ".join(counted(p)), p["score"], version, r["batch"], now, pipeline)
         for r, p in zip(rows, predictions)],
    )
    db.executemany("INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", [(pipeline, name, now) for name in batches])
    db.commit()


# drift ---------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def oov_rate(texts: list[str], vocabulary: set[str]) -> float:
    """Share of words never seen in the training split."""
    tokens = [w for text in texts for w in words(text)]
    return sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)


def mean_score(predictions: list[Record]) -> float:
    """Mean confidence: of the label, or of a sentence's word tags."""
    return sum(p["score"] for p in predictions) / max(len(predictions), 1)


def reference(task: Task, model, tokenizer, version: str) -> dict:
    """The champion's behaviour on in-distribution text (see module docstring), cached per version."""
    cache = REFERENCES / f"{task.name}-v{version}.json"
    if cache.exists():
        return load_json(cache)
    root, paths = latest_outputs(task.name), TaskPaths(task.name)
    vocabulary = {w for r in load_records(root / paths.split("train")) for w in words(task.unlabelled_text(r))}
    val = load_records(root / paths.split("val"))
    predictions = task.predict(model, tokenizer, val)
    ref = {
        "model_version": version,
        "data_hash": tracking.files_hash([root / p for p in (paths.augmented_train, paths.split("val"), paths.split("test"))]),
        "labels": dict(Counter(c for p in predictions for c in counted(p))),
        "mean_confidence": mean_score(predictions),
        "oov_rate": oov_rate([task.unlabelled_text(r) for r in val], vocabulary),
        "vocabulary": sorted(vocabulary),
    }
    save_json(cache, ref)
    return ref


def label_shift_pvalue(reference_counts: dict[str, int], counts: dict[str, int]) -> float:
    """Chi-square test of independence between (reference, incoming) and what was counted (label or entity type)."""
    from scipy.stats import chi2_contingency

    labels = sorted(set(reference_counts) | set(counts))
    if len(labels) < 2 or not counts or not reference_counts:
        return 1.0  # one label on both sides, or nothing counted on one (no entities): no mix to compare
    table = [[reference_counts.get(label, 0) for label in labels], [counts.get(label, 0) for label in labels]]
    return float(chi2_contingency(table).pvalue)


def measure_drift(ref: dict, texts: list[str], predictions: list[Record], settings: MonitoringConfig, shift: str) -> dict:
    """The three drift figures, each with its threshold and verdict; `shift` names the chi-square's (label_shift or entity_types)."""
    counts = dict(Counter(c for p in predictions for c in counted(p)))
    pvalue = label_shift_pvalue(ref["labels"], counts)
    confidence = mean_score(predictions)
    oov = oov_rate(texts, set(ref["vocabulary"]))
    return {
        shift: {"pvalue": pvalue, "threshold": settings.label_shift_pvalue, "reference": ref["labels"],
                "current": counts, "drifted": pvalue < settings.label_shift_pvalue},
        "confidence": {"reference": ref["mean_confidence"], "current": confidence, "drop": ref["mean_confidence"] - confidence,
                       "threshold": settings.confidence_drop, "drifted": ref["mean_confidence"] - confidence > settings.confidence_drop},
        "oov_rate": {"reference": ref["oov_rate"], "current": oov, "increase": oov - ref["oov_rate"],
                     "threshold": settings.oov_increase, "drifted": oov - ref["oov_rate"] > settings.oov_increase},
    }


# per day -------------------------------------------------------------------------------------------
def daily_counts(db: sqlite3.Connection, pipeline: str, tagger: bool) -> dict[str, tuple[int, Counter]]:
    """(texts, counts of labels or entity types) per day among all the pipeline's stored predictions."""
    days: dict[str, tuple[int, Counter]] = {}
    query = "SELECT substr(timestamp, 1, 10), label, count(*) FROM predictions WHERE pipeline = ? GROUP BY 1, 2 ORDER BY 1"
    for day, label, n in db.execute(query, (pipeline,)):
        texts, counts = days.get(day, (0, Counter()))
        for item in (label.split() if tagger else [label]):
            counts[item] += n
        days[day] = (texts + n, counts)
    return days


def daily_index(days: dict[str, tuple[int, Counter]]) -> list[dict]:
    """Share positive minus share negative, per day."""
    return [{"date": day, "index": (c["positive"] - c["negative"]) / texts, "texts": texts} for day, (texts, c) in days.items()]


def daily_shares(days: dict[str, tuple[int, Counter]]) -> list[dict]:
    """Each label's (or entity type's) share of what was counted, per day."""
    return [
        {"date": day, "texts": texts, "counted": c.total(), "shares": {label: n / c.total() for label, n in c.most_common()}}
        for day, (texts, c) in days.items()
    ]


def write_daily(report: dict, days: dict[str, tuple[int, Counter]], task: Task, version: str) -> list[Path]:
    """The daily figures into the report, and their plots: the sentiment index for a label set with
    positive and negative, else each label's (or entity type's) share. Returns the plot files."""
    folder, title = REPORTS / task.name, f"{task.config.registry.name} v{version}"
    if not is_tagger(task) and {"positive", "negative"} <= set(task.config.validate.labels):
        index = report["index"] = daily_index(days)
        dates, values, counts = [d["date"] for d in index], [d["index"] for d in index], [d["texts"] for d in index]
        sentiment_index_png(dates, values, folder / "index.png", f"Sentiment index ({title})")
        sentiment_index_html(dates, values, counts, folder / "index.html", f"Sentiment index ({title})")
        return [folder / "index.png", folder / "index.html"]
    shares = report["shares"] = daily_shares(days)
    kind = "entity type" if is_tagger(task) else "predicted label"
    label_shares_png([d["date"] for d in shares], [d["shares"] for d in shares], folder / "shares.png", f"Share of each {kind} ({title})")
    return [folder / "shares.png"]


def summary_markdown(report: dict) -> str:
    drift = report["drift"]
    rows = "\n".join(
        f"| {name} | {figures.get('pvalue', figures.get('drop', figures.get('increase'))):.4f} | {figures['threshold']} | {figures['drifted']} |"
        for name, figures in drift.items()
    )
    if "index" in report:
        daily = "Daily sentiment index\n\n| date | index | texts |\n|---|---|---|\n" + "\n".join(
            f"| {d['date']} | {d['index']:+.3f} | {d['texts']} |" for d in report["index"])
    else:
        daily = "Daily shares\n\n| date | texts | top shares |\n|---|---|---|\n" + "\n".join(
            f"| {d['date']} | {d['texts']} | {', '.join(f'{k} {v:.0%}' for k, v in list(d['shares'].items())[:5])} |"
            for d in report["shares"])
    return (
        f"# Monitor {report['pipeline']}: {report['model']} v{report['model_version']}\n\n"
        f"**drift detected: {report['drift_detected']}** on {report['texts']} texts\n\n"
        f"| measure | value (p-value / drop / increase) | threshold | drifted |\n|---|---|---|---|\n{rows}\n\n"
        f"## {daily}\n\nPlots: `{REPORTS / report['pipeline']}/`\n"
    )


@flow(name="monitor", log_prints=True)
def monitor(input: str | None = None, task: str | None = None) -> dict:
    """Score a pipeline's new text with its champion, store it, report per day and drift; on drift, ask for a retrain."""
    import mlflow

    logger = get_run_logger()
    params = load_params()
    settings = params.monitoring
    pipeline = task or first_pipeline(settings)
    task = get_task(pipeline, params.task(pipeline))
    if task.pipeline_task not in MONITORED:
        raise ConfigError(f"params.yaml: the monitor watches text and token classification pipelines; '{pipeline}' is {task.config.type}")
    db = open_db(Path(settings.db), (settings.tasks or [pipeline])[0])
    batches = [Path(input)] if input else new_batches(settings, pipeline, db)
    rows = [row for batch in batches for row in read_batch(batch, batch_name(batch, settings))]
    if not rows:
        logger.info("%s: no new text in %s", pipeline, input or ", ".join(map(str, batch_folders(settings, pipeline))))
        return {}

    use_all_cores()
    experiment_id = tracking.configure(params.tracking.experiment)
    name = task.config.registry.name
    version = str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    model, tokenizer = load_registered(task, f"models:/{name}/{version}")  # pinned: the alias may move meanwhile
    predictions = task.predict(model, tokenizer, rows)
    store(db, pipeline, rows, predictions, version, [batch_name(b, settings) for b in batches])

    ref = reference(task, model, tokenizer, version)
    shift = MONITORED[task.pipeline_task]
    drift = measure_drift(ref, [r["text"] for r in rows], predictions, settings, shift)
    report = {
        "pipeline": pipeline, "model": name, "model_version": version, "texts": len(rows), "batches": [str(b) for b in batches],
        "reference_data_hash": ref["data_hash"], "drift_detected": any(d["drifted"] for d in drift.values()), "drift": drift,
    }
    plots = write_daily(report, daily_counts(db, pipeline, is_tagger(task)), task, version)
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
