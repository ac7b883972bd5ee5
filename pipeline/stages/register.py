"""register: log the model to MLflow, re-score the champion on the same validation split,
and move the `champion` alias only when the new version is better by more than `min_delta`,
beyond the noise of which validation examples happen to be in the split (a paired bootstrap).

The alias is the last thing written: a run that fails anywhere leaves the aliases as they were.
Judging and moving the alias happen under a lock named after the registered model, with the
champion read inside it: of two challengers registered at the same moment, the second is judged
against the champion the first left, so the better one ends champion and each promotion.json
names the champion it was really compared with.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.errors import ConfigError, UsageError
from pipeline.models import use_all_cores
from pipeline.params import Params, PromotionConfig, TaskConfig
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.records import Record, load_records, save_json
from pipeline.registry import CHALLENGER, CHAMPION, champion_version, load_registered, promotion_lock
from pipeline.significance import PairedTest, paired_bootstrap
from pipeline.tasks import Task
from pipeline.techniques import adapters

NO_EXPORT = {"kept": False, "precision": None, "reason": "registry.onnx is null"}


@dataclass(frozen=True)
class Verdict:
    """Challenger against champion on the same validation examples, and what to do about it."""

    challenger: float  # the task's primary metric
    champion: float | None  # None: there is no champion yet
    test: PairedTest | None  # None: no champion, or promotion.test is none
    promote: bool
    reason: str
    by_origin: dict | None = None  # each origin's examples (data.source, the drop folder) and both scores on them
    never_predicted: list[str] = field(default_factory=list)  # classes validation holds that the challenger never predicts

    @property
    def delta(self) -> float | None:
        return None if self.champion is None else self.challenger - self.champion


def judge(task: Task, promotion: PromotionConfig, val: list[Record], challenger: list[Record], champion: list[Record] | None) -> Verdict:
    """Score both models' predictions on the validation examples, test the gain, decide."""
    metric = task.primary_metric
    challenger_metrics = task.metrics(val, challenger)
    challenger_score = challenger_metrics[metric]
    champion_score = None if champion is None else task.metrics(val, champion)[metric]
    test = None
    if champion is not None and promotion.test == "paired_bootstrap":
        test = paired_bootstrap(task.metric_statistics(val, challenger), task.metric_statistics(val, champion),
                                task.metric_from_statistics, promotion.min_delta, promotion.confidence,
                                promotion.resamples, promotion.seed)
    promote, reason = decide(challenger_score, champion_score, promotion, metric, test)
    by_origin = origin_scores(task, val, challenger, champion)
    if by_origin is not None:
        reason += "; by origin: " + ", ".join(
            f"{origin} ({part['examples']} examples) {part['challenger']:.4f}"
            + ("" if part["champion"] is None else f" vs {part['champion']:.4f}") for origin, part in by_origin.items())
    silent = challenger_metrics.get("never_predicted", [])
    if silent:
        reason += f"; the challenger never predicts {', '.join(silent)}, which validation holds"
    return Verdict(challenger_score, champion_score, test, promote, reason, by_origin, silent)


def origin_scores(task: Task, val: list[Record], challenger: list[Record], champion: list[Record] | None) -> dict | None:
    """Both models' primary metric on the examples from data.source and on those from the drop folder
    (None unless validation holds both): what the pooled score hides when the new data is a small share."""
    metric, mine = task.primary_metric, task.metrics_by_origin(val, challenger)
    if mine is None:
        return None
    theirs = None if champion is None else task.metrics_by_origin(val, champion)
    return {origin: {"examples": part["n"], "challenger": part[metric], "champion": None if theirs is None else theirs[origin][metric]}
            for origin, part in mine.items()}


def decide(challenger: float, champion: float | None, promotion: PromotionConfig, metric: str,
           test: PairedTest | None = None) -> tuple[bool, str]:
    """(promote, reason): the first model when it reaches min_score; a later one when it beats the
    champion by more than min_delta and, with a paired test, so does the lower end of the interval."""
    if champion is None:
        return first_model(challenger, promotion.min_score, metric)
    delta, min_delta = challenger - champion, promotion.min_delta
    scores = f"validation {metric} {challenger:.4f} vs the champion's {champion:.4f}: gain {delta:+.4f}"
    if test is not None:
        scores += (f", {test.confidence:.0%} interval [{test.low:+.4f}, {test.high:+.4f}], p = {test.p_value:.3f} "
                   f"({test.resamples} resamples of {test.examples} examples)")
    if delta <= min_delta:
        return False, f"{scores}: the gain is not more than min_delta {min_delta}"
    if test is None:
        return True, f"{scores}: the gain is more than min_delta {min_delta}"
    if test.low <= min_delta:
        return False, f"{scores}: the interval reaches down to min_delta {min_delta}, so the gain may be noise"
    return True, f"{scores}: the gain and the whole interval are above min_delta {min_delta}"


def first_model(challenger: float, min_score: float | None, metric: str) -> tuple[bool, str]:
    """(promote, reason) with no champion yet: it becomes champion unless it misses min_score."""
    if min_score is None:
        return True, "first registered model: it becomes champion"
    if challenger >= min_score:
        return True, f"first registered model: validation {metric} {challenger:.4f} reaches min_score {min_score}: it becomes champion"
    return False, f"no champion yet, and validation {metric} {challenger:.4f} is below min_score {min_score}: it does not become champion"


def run(task: Task, params: Params, paths: PipelinePaths) -> dict:
    """Register the trained model and decide on promotion; writes reports/<pipeline>/promotion.json."""
    config, experiment = task.config, params.tracking.experiment
    use_all_cores()
    if config.registry.onnx and not task.exports_onnx:
        raise ConfigError(f"params.yaml: {task.pipeline}.registry.onnx: the {task.pipeline} task has no ONNX export (sentiment has); set it to null")
    # Before anything is registered: a folder that cannot take promotion.json, or an unreachable
    # tracking store (configure checks it), stops the stage while the aliases are untouched.
    ensure_writable(paths.reports)
    tracking.configure(experiment)
    with tracking.registry_errors(f"register[{task.pipeline}], no alias moved"):
        decision, export_report = register(task, config, paths, experiment)
    save_json(paths.promotion, decision)
    save_json(paths.export_report, export_report)
    print(f"register[{task.pipeline}]: {decision['model_name']} v{decision['challenger']['version']} -> @{decision['alias']}: {decision['reason']}")
    return decision


def register(task: Task, config: TaskConfig, paths: PipelinePaths, experiment: str) -> tuple[dict, dict]:
    """Register the model, then, under the model's promotion lock, re-score the champion, decide and move
    an alias, the very last step; returns (decision, ONNX export report)."""
    import mlflow

    client = mlflow.MlflowClient()
    name, metric = config.registry.name, task.primary_metric
    val = load_records(paths.split("val"))
    predictions = challenger_predictions(task, paths, val)

    what, lock = promotion_lock(name)
    with ExitStack() as promoting:  # the lock is held from judging to the alias, which comes after the run closed
        with tracking.resume_run(paths.model_dir, experiment) as run:
            version = log_model(task, paths, name)
            tags = {**tracking.run_tags(paths.model_dir), "run_id": run.info.run_id,
                    f"val_{metric}": f"{task.metrics(val, predictions)[metric]:.4f}"}
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            export_report = log_export(task, config, paths, val, version) if config.registry.onnx else NO_EXPORT
            print(f"register[{task.pipeline}]: v{version} registered; waiting for {what} to judge it", flush=True)
            promoting.enter_context(lock)
            champion = champion_version(client, name)  # read inside the lock: another promotion may have moved it
            verdict = judge(task, config.promotion, val, predictions, champion_predictions(task, name, champion, val))
            if champion is not None:
                print(f"register[{task.pipeline}]: champion v{champion.version} re-scored on today's val: {metric}={verdict.champion:.4f}")
            decision = decision_record(verdict, config.promotion, name, metric, version, champion)
            client.update_model_version(name, version, description=("Promoted to champion: " if verdict.promote else "Not promoted: ") + verdict.reason)
            log_decision(decision, verdict)
        client.set_registered_model_alias(name, decision["alias"], version)  # last step, see module docstring
    return decision, export_report


def champion_predictions(task: Task, name: str, champion: Any | None, val: list[Record]) -> list[Record] | None:
    """The champion's predictions on today's validation examples (None when there is no champion)."""
    if champion is None:
        return None
    model, tokenizer = load_registered(task, f"models:/{name}/{champion.version}")  # pinned: the version judged
    return task.predict(model, tokenizer, val)


def challenger_predictions(task: Task, paths: PipelinePaths, val: list[Record]) -> list[Record]:
    """The model's validation predictions that the evaluate stage kept, one per example of today's split."""
    rerun = f"run `dvc repro evaluate@{task.pipeline}` first"
    if not paths.val_predictions.exists():
        raise UsageError(f"{paths.val_predictions} not found: {rerun}")
    predictions = load_records(paths.val_predictions)
    if len(predictions) != len(val):
        raise UsageError(f"{paths.val_predictions} holds {len(predictions)} predictions for {len(val)} validation examples: {rerun}")
    return predictions


def decision_record(verdict: Verdict, promotion: PromotionConfig, name: str, metric: str, version: str, champion: Any | None) -> dict:
    """What promotion.json says: both versions and scores, the rule's settings, the test, the outcome."""
    if verdict.test is not None:
        test = verdict.test.as_dict()
    else:
        test = None if champion is None else {"method": promotion.test}
    return {
        "model_name": name,
        "metric": f"val_{metric}",
        "challenger": {"version": version, "score": verdict.challenger},
        "champion": None if champion is None else {"version": str(champion.version), "score": verdict.champion},
        "delta": verdict.delta,
        "min_delta": promotion.min_delta,
        "min_score": promotion.min_score,
        "test": test,
        "promoted": verdict.promote,
        "alias": CHAMPION if verdict.promote else CHALLENGER,
        "reason": verdict.reason,
        "by_origin": verdict.by_origin,
        "never_predicted": verdict.never_predicted,
    }


def log_decision(decision: dict, verdict: Verdict) -> None:
    """The decision into the active run: promotion.json, tags, and the test's figures as metrics."""
    import mlflow

    mlflow.log_dict(decision, "promotion.json")
    mlflow.set_tags({"promotion": decision["alias"], "promotion_reason": verdict.reason})
    if verdict.test is not None:
        mlflow.log_metrics({"promotion_delta": verdict.delta, "promotion_interval_low": verdict.test.low,
                            "promotion_interval_high": verdict.test.high, "promotion_p_value": verdict.test.p_value})


def log_export(task: Task, config: TaskConfig, paths: PipelinePaths, val: list, version: str) -> dict:
    """Export the model to ONNX Runtime and check it on the validation split; a kept export goes into
    the run (`onnx/`). The version's `onnx` tag says which precision it got, or `refused`."""
    import mlflow

    from pipeline.techniques import export
    with tempfile.TemporaryDirectory(prefix="onnx-") as scratch:
        folder = Path(scratch) / export.ARTIFACT_PATH
        try:
            if adapters.has_adapter(paths.model_dir):  # checked before loading a model only to refuse it
                raise export.ExportError("a prompt-tuning adapter is not exported (LoRA and AdaLoRA are merged, and are)")
            model, tokenizer = task.load_model(str(paths.model_dir))
            export.export(model, tokenizer, folder, config.registry.onnx)
            report = {"kept": True, "precision": config.registry.onnx,
                      **export.check(task, model, tokenizer, folder, val, config.registry.onnx_max_drop)}
        except export.ExportError as exc:
            report = {"kept": False, "precision": config.registry.onnx, "reason": str(exc)}
        else:
            mlflow.log_artifacts(str(folder), artifact_path=export.ARTIFACT_PATH)
    mlflow.MlflowClient().set_model_version_tag(
        config.registry.name, version, export.VERSION_TAG, config.registry.onnx if report["kept"] else "refused")
    mlflow.log_dict(report, "export.json")
    print(f"register[{task.pipeline}]: ONNX export ({config.registry.onnx}) "
          + ("kept: val {metric} {model:.4f} -> {export:.4f}, {onnx_megabytes} MB".format(**report) if report["kept"] else f"refused: {report['reason']}"))
    return report


def log_model(task: Task, paths: PipelinePaths, name: str) -> str:
    """Log the model and register it; returns the version. The transformers flavour where a
    pipeline exists; a pyfunc for tasks without one and for models with a prompt adapter."""
    import mlflow
    import torch
    import transformers

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    if task.transformers_task is None or adapters.has_adapter(paths.model_dir):
        import peft  # here only: importing it costs seconds a plain model's register does not need

        import pipeline
        from pipeline.task_model import TaskModel, write_config

        with tempfile.TemporaryDirectory(prefix="config-") as folder:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=TaskModel(),
                artifacts={"model": str(paths.model_dir), "config": str(write_config(task.pipeline, task.config, Path(folder) / "config.yaml"))},
                code_paths=[str(Path(pipeline.__file__).parent)],  # the task code travels with the model
                pip_requirements=requirements + [f"peft=={peft.__version__}", "sacrebleu", "pyyaml"],
                registered_model_name=name,
            )
        return str(info.registered_model_version)
    model, tokenizer = task.load_model(str(paths.model_dir))
    info = mlflow.transformers.log_model(
        {"model": model, "tokenizer": tokenizer},
        name="model",
        task=task.transformers_task,
        pip_requirements=requirements,  # explicit: MLflow's inference of requirements fails looking up torchvision
        registered_model_name=name,
    )
    return str(info.registered_model_version)
