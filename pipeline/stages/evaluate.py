"""evaluate: score the trained model on val and test; metrics for DVC and MLflow, plots."""

from __future__ import annotations

import re
import shutil
from typing import Any

from pipeline import tracking
from pipeline.models import use_all_cores
from pipeline.params import Params
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.records import Record, load_records, save_json, save_records
from pipeline.tasks import Task

EVAL_SPLITS = ("val", "test")
MLFLOW_REFUSES = re.compile(r"[^\w\-. :/]")  # characters MLflow refuses in a metric name, e.g. the '?' of a label


def score(task: Task, model: Any, tokenizer: Any, examples: list[Record]) -> tuple[dict, list[Record]]:
    """Metrics and predictions of a model on examples."""
    predictions = task.predict(model, tokenizer, examples)
    return task.metrics(examples, predictions), predictions


def run(task: Task, params: Params, paths: PipelinePaths) -> dict:
    """Write metrics/<pipeline>.json ({val: ..., test: ...}) and the plots, and log both to the model's run."""
    experiment = params.tracking.experiment
    import mlflow

    use_all_cores()
    ensure_writable(paths.metrics.parent, paths.reports)  # before scoring: a clear error naming the path
    model, tokenizer = task.load_model(str(paths.model_dir))
    metrics, images, tables = {}, [], {}
    shutil.rmtree(paths.evaluation, ignore_errors=True)
    paths.evaluation.mkdir(parents=True)
    for split in EVAL_SPLITS:
        examples = load_records(paths.split(split))
        metrics[split], predictions = score(task, model, tokenizer, examples)
        by_origin = task.metrics_by_origin(examples, predictions)
        if by_origin is not None:  # the drop folder's examples apart: is the new data learned?
            metrics[split]["by_origin"] = by_origin
        if split == "val":
            save_records(paths.val_predictions, predictions)
        images += task.write_plots(examples, predictions, paths.evaluation, split)
        tables[split] = task.sample_table(examples, predictions)
    save_json(paths.metrics, metrics)
    with tracking.resume_run(paths.model_dir, experiment):
        for split, values in metrics.items():
            mlflow.log_metrics({f"{split}_{k}": v for k, v in _numbers(values).items()})
        mlflow.log_dict(metrics, "metrics.json")
        mlflow.set_tags({f"{split}_never_predicted": ", ".join(values["never_predicted"])
                         for split, values in metrics.items() if values.get("never_predicted")})
        for image in images:
            mlflow.log_artifact(str(image), artifact_path="plots")
        for split, table in tables.items():
            if table is not None:
                mlflow.log_table(table, artifact_file=f"samples_{split}.json")
    print(f"evaluate[{task.pipeline}]: " + ", ".join(
        f"{split} {task.primary_metric}={values[task.primary_metric]:.4f}" for split, values in metrics.items()
    ))
    for split, values in metrics.items():
        if "by_origin" in values:
            print(f"evaluate[{task.pipeline}]: {split} " + ", ".join(
                f"{origin} ({part['n']} examples) {task.primary_metric}={part[task.primary_metric]:.4f}"
                for origin, part in values["by_origin"].items()))
        if values.get("never_predicted"):
            print(f"evaluate[{task.pipeline}]: {split}: the model never predicts {', '.join(values['never_predicted'])}, "
                  f"which the {split} examples hold: its F1 there is 0")
    return metrics


def _numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """Flatten nested metrics into MLflow-friendly names, e.g. per_class.negative.f1 (refused characters as '_')."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{MLFLOW_REFUSES.sub('_', str(key))}"
        if isinstance(value, dict):
            flat.update(_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat
