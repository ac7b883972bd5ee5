"""train: fine-tune with the Hugging Face Trainer; dynamic padding, length-grouped batches,
early stopping on the validation metric, a checkpoint each epoch, resume after a kill."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback

from pipeline import distributed, registry, tracking
from pipeline.errors import ConfigError
from pipeline.models import check_max_length, keep_layers, mixed_precision, resolve_model, use_all_cores
from pipeline.monitoring.reference import log_reference_data
from pipeline.params import Params, TaskConfig, TrainConfig, section_hash
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.plots import learning_curves_png
from pipeline.readers import from_drop_folder
from pipeline.records import Record, load_json, load_records, save_json
from pipeline.tasks import Task
from pipeline.techniques import adapters
from pipeline.techniques.distillation import check_vocabularies, distilling
from pipeline.techniques.layer_decay import with_layer_decay

MIN_BATCH_SIZE = 8  # train.min_steps halves the batch down to this, not to a few examples a step


def run(task: Task, params: Params, paths: PipelinePaths) -> dict:
    """Train on the augmented training split, validate each epoch, save the best model."""
    config, experiment = task.config, params.tracking.experiment
    import mlflow

    use_all_cores()
    if not distributed.is_main():
        return train_only(task, config, paths)
    # Fail now, naming the path, rather than after training: where the model, reports and checkpoints go.
    ensure_writable(paths.model_dir.parent, paths.reports, paths.checkpoints)
    experiment_id = tracking.configure(experiment)  # before a registered teacher is loaded
    train_examples = load_records(paths.augmented_train)
    val_examples = load_records(paths.split("val"))
    base = base_model_path(task, paths)
    from_champion = Path(base).parent == paths.checkpoints  # a copy of the champion (train.start_from), removed after
    checkpoints = checkpoint_folder(config, paths, base)
    last_checkpoint = last_complete_checkpoint(checkpoints)
    trainer, tokenizer = build_trainer(task, config, train_examples, val_examples, checkpoints, base)
    size = adapters.trainable_parameters(trainer.model)
    batch_size = trainer.args.per_device_train_batch_size * distributed.world_size()  # train.min_steps may have halved it
    epochs = trainer.args.num_train_epochs  # ... and raised these

    tags = tracking.lineage_tags(task.pipeline, config, paths)
    run_id_file = checkpoints / tracking.RUN_FILE
    resumed_run = load_json(run_id_file)["run_id"] if last_checkpoint and run_id_file.exists() else None
    with mlflow.start_run(run_id=resumed_run, experiment_id=experiment_id, run_name=f"{task.pipeline}-{tags['data_hash'][:8]}") as run:
        checkpoints.mkdir(parents=True, exist_ok=True)
        save_json(run_id_file, {"run_id": run.info.run_id})
        if not resumed_run:
            mlflow.set_tags(tags)
            mlflow.log_params(_flat_params(config))
            mlflow.log_params({"train_rows": len(train_examples), "val_rows": len(val_examples), **size,
                               "started_from": Path(base).name if from_champion else base,
                               "step_batch_size": batch_size, "step_epochs": epochs})
            for report in (paths.provenance, paths.validation_report, paths.pretrain_report):
                if report.exists():
                    mlflow.log_artifact(str(report), artifact_path="data")
            if paths.data_docs.is_dir():
                mlflow.log_artifacts(str(paths.data_docs), artifact_path="data/data_docs")
            log_reference_data(task, train_examples, paths.split("val"))
        if last_checkpoint:
            print(f"train[{task.pipeline}]: resuming from {last_checkpoint}")
        result = trainer.train(resume_from_checkpoint=last_checkpoint)

        shutil.rmtree(paths.model_dir, ignore_errors=True)
        adapters.save(task.export_model(trainer.model), paths.model_dir, lambda: load_base(task, config, base)[0])
        tokenizer.save_pretrained(str(paths.model_dir))
        tracking.record_run(paths.model_dir, run.info.run_id, tags)

        history = epoch_history(trainer.state.log_history)
        save_json(paths.history, history)
        for record in history:
            step = int(round(record["epoch"] * 1000))  # MLflow steps are integers; epochs can be fractions
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)
        curves = paths.reports / "learning_curves.png"
        learning_curves_png(history, task.primary_metric, curves, title=f"{task.pipeline}: training")
        mlflow.log_artifact(str(curves), artifact_path="plots")
        summary = {
            "train_seconds": round(result.metrics["train_runtime"], 1),
            "train_samples_per_second": round(result.metrics["train_samples_per_second"], 2),
            "best_val_" + task.primary_metric: trainer.state.best_metric,
            "epochs_run": round(trainer.state.epoch, 2),
            "optimizer_steps": trainer.state.global_step,
            "batch_size": batch_size,
            "trainable_parameters": size["trainable_parameters"],
            "trainable_fraction": round(size["trainable_fraction"], 6),
            "processes": distributed.world_size(),
        }
        mlflow.log_metrics({k: v for k, v in summary.items() if v is not None})
        save_json(paths.train_summary, summary)
    shutil.rmtree(checkpoints, ignore_errors=True)
    if from_champion:
        shutil.rmtree(base, ignore_errors=True)
    print(f"train[{task.pipeline}]: {json.dumps(summary)}")
    return summary


def train_only(task: Task, config: TaskConfig, paths: PipelinePaths) -> dict:
    """A DDP worker other than rank 0: its share of the training; rank 0 logs, saves and reports."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())  # a registered teacher loads from the same store
    base = base_model_path(task, paths)
    checkpoints = checkpoint_folder(config, paths, base)
    trainer, _ = build_trainer(task, config, load_records(paths.augmented_train), load_records(paths.split("val")),
                               checkpoints, base)
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(checkpoints))
    return {}


def checkpoint_folder(config: TaskConfig, paths: PipelinePaths, base: str) -> Path:
    """Checkpoints are keyed by everything that shapes training, so a resume never mixes runs."""
    return paths.checkpoints / _fingerprint(config, [paths.augmented_train, paths.split("val")], base)


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint in `folder` that was saved completely, or None.

    The Trainer writes trainer_state.json last, so a process killed while saving leaves a newer
    checkpoint without it; resuming from that one would fail on every rerun, so it is removed."""
    complete = None
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name[len("checkpoint-"):].isdigit()] if folder.is_dir() else []
    for checkpoint in sorted(found, key=lambda path: int(path.name[len("checkpoint-"):])):
        if (checkpoint / "trainer_state.json").exists():
            complete = checkpoint
        else:
            print(f"train: removing {checkpoint}, left incomplete by an interrupted save")
            shutil.rmtree(checkpoint, ignore_errors=True)  # DDP workers may both get here
    return None if complete is None else str(complete)


def base_model_path(task: Task, paths: PipelinePaths) -> str:
    """Where fine-tuning starts: the champion with train.start_from: champion (once there is one), the
    domain-adapted model when pretrain is on, else model.name."""
    config = task.config
    if config.train.start_from == "champion":
        champion = champion_folder(task, paths)
        if champion is not None:
            return champion
    return str(paths.pretrained) if config.pretrain.enabled else resolve_model(config.model.name, f"{paths.pipeline}.model.name")


def champion_folder(task: Task, paths: PipelinePaths) -> str | None:
    """The registered champion as a model folder under checkpoints/ (None while there is no champion). Its
    name holds the version, so a checkpoint only resumes a run that started from the same champion."""
    import mlflow

    name = task.config.registry.name
    tracking.point_at_store()
    champion = registry.champion_version(mlflow.MlflowClient(), name)
    if champion is None:
        print(f"train[{task.pipeline}]: no champion yet: starting from {task.config.model.name} (train.start_from)")
        return None
    folder = paths.checkpoints / f"start-{name}-v{champion.version}"
    if not (folder / "config.json").exists():
        model, tokenizer = registry.load_registered(task, f"models:/{name}/{champion.version}")
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".start-", dir=paths.checkpoints))
        model.save_pretrained(str(scratch))
        tokenizer.save_pretrained(str(scratch))
        expected = task.load_model(str(scratch))[0].config.id2label  # the labels as today's params order them
        if {int(i): label for i, label in model.config.id2label.items()} != expected:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ConfigError(f"params.yaml: {task.pipeline}.train.start_from: champion: {name} v{champion.version} predicts "
                              f"{list(model.config.id2label.values())}, the params now {list(expected.values())}; "
                              "set start_from: base to train a new head")
        try:
            scratch.rename(folder)
        except OSError:  # another process (a DDP worker) saved it first
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"train[{task.pipeline}]: starting from the champion, {name} v{champion.version} (train.start_from)")
    return str(folder)


def load_base(task: Task, config: TaskConfig, path: str) -> tuple[Any, Any]:
    """(model, tokenizer) with the task's head, cut to model.layers when set."""
    model, tokenizer = task.load_model(path)
    check_max_length(model, config.train.max_length, f"{task.pipeline}.train.max_length")
    if config.model.layers is not None:
        keep_layers(model, config.model.layers, f"{task.pipeline}.model.layers")
    return model, tokenizer


def build_trainer(
    task: Task, config: TaskConfig, train_examples: list[Record], val_examples: list[Record],
    output_dir: Path, base: str, callbacks: Sequence[TrainerCallback] = (),
) -> tuple[Any, Any]:
    """(Trainer, tokenizer) for the task's settings: PEFT, distillation, time budget, early stopping."""
    import torch
    from transformers import EarlyStoppingCallback, set_seed

    settings = config.train
    set_seed(settings.seed)  # before the new head is initialised, so a rerun gives the same model
    model, tokenizer = load_base(task, config, base)
    arguments_class, trainer_class = task.trainer_classes()
    bf16 = mixed_precision(settings.precision)
    train_dataset = task.encode(tokenizer, weighted_by_origin(train_examples, config))
    batch_size, epochs = step_plan(len(train_dataset), settings, task.pipeline)
    args = arguments_class(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=per_worker_batch_size(batch_size),
        per_device_eval_batch_size=2 * per_worker_batch_size(batch_size),
        warmup_steps=settings.warmup,  # a float in [0, 1) is a share of all steps
        weight_decay=settings.weight_decay,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=task.primary_metric,
        greater_is_better=True,
        train_sampling_strategy="group_by_length",
        seed=settings.seed,
        report_to="none",
        bf16=bf16,  # autocast: matrix products in bf16, weights and optimizer state stay fp32
        # DDP over gloo and bf16 autocast on a CPU both need Accelerate's CPU mode
        use_cpu=(distributed.world_size() > 1 or bf16) and not torch.cuda.is_available(),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **task.training_arguments(),
    )
    callbacks = [EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience), *callbacks]
    if settings.max_minutes is not None:
        callbacks.append(TimeBudget(settings.max_minutes))
    if settings.peft is not None:
        per_epoch = math.ceil(len(train_dataset) / batch_size)
        model = adapters.wrap(model, settings.peft, task.peft_task_type(model), per_epoch, per_epoch * math.ceil(epochs),
                              key=f"{task.pipeline}.train.peft")
        if settings.peft.method == "adalora":
            callbacks.append(AdaLoraBudget(model))
    if settings.distillation is not None:
        teacher, teacher_tokenizer = registry.load_reference(task, settings.distillation.teacher, f"{task.pipeline}.train.distillation.teacher")
        check_vocabularies(teacher_tokenizer, tokenizer)
        trainer_class = distilling(
            trainer_class, teacher.to(args.device), settings.distillation.temperature, settings.distillation.alpha
        )
    if settings.layer_decay < 1:
        trainer_class = with_layer_decay(trainer_class, settings.layer_decay)
    trainer = trainer_class(
        model=task.training_model(model),
        args=args,
        train_dataset=train_dataset,
        eval_dataset=task.encode(tokenizer, val_examples),
        data_collator=task.data_collator(tokenizer),
        compute_metrics=task.compute_metrics,
        callbacks=callbacks,
    )
    return trainer, tokenizer


def weighted_by_origin(examples: list[Record], config: TaskConfig) -> list[Record]:
    """The training examples, each one read from a `data.incoming` batch repeated `train.incoming_weight` times."""
    weight = config.train.incoming_weight
    if weight == 1:
        return examples
    new = [example for example, is_new in zip(examples, from_drop_folder(examples, config.data.incoming)) if is_new]
    print(f"train: {len(new)} of {len(examples)} training examples come from {config.data.incoming}; "
          f"each is seen {weight} times an epoch (train.incoming_weight)")
    return examples + new * (weight - 1)


def optimizer_steps(examples: int, batch_size: int, epochs: float) -> int:
    """The optimizer steps of `epochs` passes over `examples` in batches of `batch_size`."""
    return math.ceil(math.ceil(examples / batch_size) * epochs)


def step_plan(examples: int, settings: TrainConfig, pipeline: str) -> tuple[int, float]:
    """(batch size, epochs) to train with. While the epochs would take fewer optimizer steps than train.min_steps,
    train.batch_size is halved (down to MIN_BATCH_SIZE, and while it splits between the DDP workers), then the
    epochs are raised to the whole number that takes enough (early stopping still keeps the best epoch on
    validation); says so when either changes."""
    batch_size, epochs, wanted = settings.batch_size, settings.epochs, settings.min_steps

    def can_halve(size: int) -> bool:
        return size // 2 >= MIN_BATCH_SIZE and (size // 2) % distributed.world_size() == 0

    while wanted and can_halve(batch_size) and optimizer_steps(examples, batch_size, epochs) < wanted:
        batch_size //= 2
    if wanted and optimizer_steps(examples, batch_size, epochs) < wanted:
        epochs = math.ceil(wanted / math.ceil(examples / batch_size))
    if (batch_size, epochs) != (settings.batch_size, settings.epochs) and distributed.is_main():
        print(f"train[{pipeline}]: {examples} training examples over {settings.epochs:g} epochs take "
              f"{optimizer_steps(examples, settings.batch_size, settings.epochs)} steps at batch_size {settings.batch_size}, "
              f"fewer than train.min_steps {wanted}: batch size {batch_size}, {epochs:g} epochs "
              f"({optimizer_steps(examples, batch_size, epochs)} steps)")
    return batch_size, epochs


def per_worker_batch_size(batch_size: int) -> int:
    """train.batch_size is the batch of one optimiser step, split evenly between the DDP workers."""
    if batch_size % distributed.world_size():
        raise ConfigError(f"params.yaml: train.batch_size {batch_size} does not split evenly between "
                          f"{distributed.world_size()} DDP workers (train.processes)")
    return batch_size // distributed.world_size()


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA re-allocates ranks from the gradients of each step, before the optimizer uses them."""

    def __init__(self, model: Any):
        self.model = model

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)


class TimeBudget(TrainerCallback):
    """Ends training once `minutes` have passed, with a last evaluation and checkpoint."""

    def __init__(self, minutes: float):
        self.minutes = minutes
        self.deadline = float("inf")

    def on_train_begin(self, args, state, control, **kwargs):
        self.deadline = time.monotonic() + 60 * self.minutes

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() > self.deadline:
            print(f"train: the {self.minutes:g}-minute budget is spent at step {state.global_step}; evaluating and stopping")
            control.should_training_stop = True
            control.should_evaluate = control.should_save = True
        return control


def epoch_history(log_history: list[dict]) -> list[dict]:
    """Merge the Trainer's training and evaluation logs into one record per epoch."""
    merged: dict[float, dict] = {}
    for entry in log_history:
        if "epoch" not in entry or not ({"loss", "eval_loss"} & entry.keys()):
            continue
        record = merged.setdefault(round(entry["epoch"], 4), {"epoch": round(entry["epoch"], 4)})
        if "loss" in entry:
            record["train_loss"] = entry["loss"]
        record.update({k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))})
    return [merged[epoch] for epoch in sorted(merged)]


def _fingerprint(config: TaskConfig, inputs: list[Path], base: str) -> str:
    """The training settings, the starting model and the input data: a checkpoint only resumes a run of the same."""
    digest = hashlib.sha256((section_hash(config.training_sections()) + base).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _flat_params(config: TaskConfig) -> dict[str, object]:
    """What the model was made from, as flat MLflow params (e.g. train.learning_rate): the training
    sections, and how its data was made (source, split, augment). Not promotion or registry settings."""
    sections = {**config.training_sections(), "split": config.split, "augment": config.augment}
    flat = {f"{name}.{key}": value for name, section in sections.items() for key, value in dataclasses.asdict(section).items()}
    flat["data.source"] = json.dumps(config.data.source) if isinstance(config.data.source, dict) else config.data.source
    return flat
