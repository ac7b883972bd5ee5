"""`finetune search`: an Optuna study over the train settings of one task.

Each trial fine-tunes on the augmented training split with settings drawn from `<pipeline>.search`
and is scored on the validation split, as the train stage would; each is an MLflow child run
of one `search` run. Trials that trail the median after an epoch are pruned. The best values
go to reports/<pipeline>/search.json with the `dvc exp run -S ...` command that trains with them,
and into params.yaml itself with `--apply` (comments kept), so the next `dvc repro` uses them.
With `search.storage` (a database URL), processes on any machines share one study through
Optuna's RDB storage and together run `search.trials` trials.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from transformers import TrainerCallback

from pipeline import tracking
from pipeline.databases import sqlalchemy_url
from pipeline.errors import ServiceError
from pipeline.params import SearchConfig, TaskConfig
from pipeline.paths import PipelinePaths
from pipeline.records import load_records, save_json
from pipeline.stages.train import base_model_path, build_trainer
from pipeline.tasks import Task
from pipeline.techniques.adapters import MERGEABLE

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def suggest(trial: Any, config: TaskConfig) -> dict[str, Any]:
    """The trial's train settings, keyed by their path under the task's `train:` section."""
    space = config.search
    values = {
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
        "epochs": trial.suggest_int("epochs", *space.epochs),
        "warmup": trial.suggest_float("warmup", *space.warmup),
    }
    if config.train.peft is not None and config.train.peft.method in MERGEABLE:
        values["peft.r"] = trial.suggest_categorical("lora_r", space.lora_r)
    return values


def with_values(config: TaskConfig, values: dict[str, Any]) -> TaskConfig:
    """A copy of the task config with the trial's train settings."""
    plain = {k: v for k, v in values.items() if "." not in k}
    train = dataclasses.replace(config.train, **plain)
    if "peft.r" in values:
        train = dataclasses.replace(train, peft=dataclasses.replace(train.peft, r=values["peft.r"]))
    return dataclasses.replace(config, train=train)


class ReportToStudy(TrainerCallback):
    """Hands each epoch's validation metric to Optuna and stops a trial the pruner gives up on."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.trial.report(metrics[f"eval_{self.metric}"], step=round(state.epoch or 0))
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def open_study(space: SearchConfig, pipeline: str) -> Any:
    """A study in this process; with `search.storage`, the one study (created by whichever process comes first)
    that every process and machine pointed at that database shares. A trial of a process that dies without
    a heartbeat for two minutes is marked failed, so it is not waited for."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if space.storage is None:
        return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=space.seed), pruner=pruner)
    url = sqlalchemy_url(space.storage)
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental since Optuna 2.9; a warning per process is noise
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except (SQLAlchemyError, ImportError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise ServiceError(f"{pipeline}.search.storage: cannot open the Optuna storage {shown}: {str(exc).strip().splitlines()[0]}") from None
    study = optuna.create_study(storage=storage, study_name=space.study or f"finetune-{pipeline}", load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(),  # unseeded: with one seed,
                                pruner=pruner)                                               # every process draws the same
    optuna.storages.fail_stale_trials(study)  # a trial whose process died no longer counts as running
    return study


def counted_trials(study: Any) -> list:
    """The study's trials that count towards `search.trials`: finished, pruned, or running in some process."""
    return study.get_trials(deepcopy=False, states=COUNTED)


def run(task: Task, config: TaskConfig, paths: PipelinePaths, experiment: str, trials: int | None = None) -> dict:
    """Run the study; returns (and writes to reports/<pipeline>/search.json) the best settings."""
    import mlflow

    trials = trials or config.search.trials
    train_examples = load_records(paths.augmented_train)
    val_examples = load_records(paths.split("val"))
    base = base_model_path(task, paths)
    metric = task.primary_metric
    experiment_id = tracking.configure(experiment)
    study = open_study(config.search, task.pipeline)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        values = suggest(trial, config)
        with mlflow.start_run(nested=True, run_name=f"trial-{trial.number}") as child:
            mlflow.log_params(values)
            with tempfile.TemporaryDirectory(prefix="search-") as output:
                trainer, _ = build_trainer(
                    task, with_values(config, values), train_examples, val_examples, Path(output), base,
                    callbacks=[ReportToStudy(trial, metric)],
                )
                try:
                    trainer.train()
                except optuna.TrialPruned:
                    mlflow.set_tag("trial_state", "pruned")
                    pruned = True
                else:
                    pruned = False
                    mlflow.set_tag("trial_state", "complete")
                    mlflow.log_metric(f"best_val_{metric}", trainer.state.best_metric)
            trial.set_user_attr("mlflow_run_id", child.info.run_id)
        if pruned:
            raise optuna.TrialPruned()
        return trainer.state.best_metric

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"search-{task.pipeline}") as parent:
        mlflow.set_tags({**tracking.lineage_tags(task.pipeline, config, paths), "search": "true"})
        to_run = trials - len(counted_trials(study))
        if to_run > 0:
            study.optimize(objective, n_trials=to_run, callbacks=[MaxTrialsCallback(trials, states=COUNTED)])
        if config.search.storage is not None:
            mine = sum(t.user_attrs.get("worker") == worker for t in study.trials)
            print(f"search[{task.pipeline}]: shared study {study.study_name}: {len(counted_trials(study))} of {trials} trials, {mine} run here")
        best = study.best_trial
        best_values = suggest(optuna.trial.FixedTrial(best.params), config)
        mlflow.log_params({f"best.{k}": v for k, v in best_values.items()})
        mlflow.log_metric(f"best_val_{metric}", best.value)
        report = {
            "task": task.pipeline,
            "metric": f"val_{metric}",
            "best_value": best.value,
            "best_params": {f"{task.pipeline}.train.{k}": v for k, v in best_values.items()},
            "dvc_exp_run": "dvc exp run " + " ".join(f"-S {task.pipeline}.train.{k}={v}" for k, v in best_values.items()),
            "mlflow_run_id": parent.info.run_id,
            "trials": [
                {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                 "mlflow_run_id": t.user_attrs.get("mlflow_run_id")}
                for t in study.trials
            ],
        }
        save_json(paths.search_report, report)
        mlflow.log_artifact(str(paths.search_report))
    print(f"search[{task.pipeline}]: best val {metric} {best.value:.4f} with {report['best_params']}")
    print(f"search[{task.pipeline}]: train with them: {report['dvc_exp_run']}   (or finetune search --apply)")
    return report


def apply(best_params: dict[str, Any], params_file: Path) -> None:
    """Write the values into params.yaml, keeping its comments and layout (as `dvc exp run -S` does)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(params_file)
    for dotted, value in best_params.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    yaml.dump(data, params_file)
