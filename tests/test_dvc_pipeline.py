"""`dvc repro` end to end in a temp git + DVC repo: metrics, MLflow run, registered champion,
nothing re-run when nothing changed, and only the dependent stages re-run after a param edit."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import INTENT_VOCAB, ROOT, make_intent_rows, make_rows, tiny_params, write_csv, write_params

BIN = Path(sys.executable).parent


def sh(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


ALL_STAGES = ("collect", "validate", "split", "augment", "pretrain", "train", "evaluate", "register")


def every_stage(pipeline: str) -> set[str]:
    """The stages a first `dvc repro` of one pipeline runs: `sources`, then the pipeline's own."""
    return {"sources"} | {f"{s}@{pipeline}" for s in ALL_STAGES}


def init_repo(path: Path, params: dict) -> Path:
    """A git + DVC repo at `path` with the project's dvc.yaml and `params` (data written by the caller)."""
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    write_params(path, params)
    (path / ".gitignore").write_text("/mlflow/\n")
    sh("git", "init", "-q", cwd=path)
    sh("dvc", "init", "-q", cwd=path)
    return path


@pytest.mark.e2e
def test_dvc_repro_runs_the_translation_task_to_a_promoted_champion(tmp_path, tiny_model, monkeypatch):
    import mlflow

    from pipeline.registry import load_translator
    from tests.test_translation import SAMPLE, translation_section

    (tmp_path / "data").mkdir()
    for suffix in (".de", ".en"):
        shutil.copy(SAMPLE.with_suffix(suffix), tmp_path / "data" / f"pairs{suffix}")
    init_repo(tmp_path, {"pipelines": ["translation"], "tracking": {"experiment": "test"}, "translation": translation_section(tiny_model)})

    output = sh("dvc", "repro", cwd=tmp_path)
    assert stages_run(output) == every_stage("translation")
    metrics = yaml.safe_load((tmp_path / "metrics" / "translation.json").read_text())
    for split in ("val", "test"):
        assert {"bleu", "chrf", "signature"} <= metrics[split].keys() and metrics[split]["direction"] == "de-en"
        assert "case:lc" in metrics[split]["signature"]["bleu"]
    assert metrics["val"]["chrf"] > 0
    assert (tmp_path / "reports" / "translation" / "evaluation" / "bleu_by_length_test.png").exists()
    promotion = yaml.safe_load((tmp_path / "reports" / "translation" / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["metric"] == "val_bleu"

    monkeypatch.chdir(tmp_path)  # the project's default store: mlflow/ in the working directory
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("translation", "champion")
    assert str(champion.version) == "1"
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert {"samples_val.json", "samples_test.json", "plots"} <= artifacts
    model, tokenizer = load_translator("models:/translation@champion", "augment.back_translation.from_pivot")  # what back-translation may name
    assert type(model).__name__ == "EncoderDecoderModel"
    printed = sh("finetune", "predict", "--pipeline", "translation", "Die Bank meldete einen Verlust.", cwd=tmp_path)
    assert printed.strip()

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["translation"]["promotion"]["min_delta"] = 100.0  # no BLEU gain can be that large
    write_params(tmp_path, params)
    assert "register@translation" in stages_run(sh("dvc", "repro", cwd=tmp_path))
    decision = yaml.safe_load((tmp_path / "reports" / "translation" / "promotion.json").read_text())
    assert not decision["promoted"] and decision["champion"]["version"] == "1"
    assert decision["champion"]["score"] == pytest.approx(metrics["val"]["bleu"])  # re-scored from the registry


@pytest.mark.e2e
def test_dvc_repro_trains_three_pipelines_registers_each_and_reruns_only_what_changed(tmp_path, tiny_model):
    """Two text-classification pipelines and NER (with a CRF) in one repo: each trains and promotes on its own, nothing
    re-runs when nothing changed, and a param edit or new data re-runs only the stages that depend on it."""
    import mlflow

    from tests.ner_data import make_sentences, ner_params, write_conll

    write_csv(tmp_path / "data" / "sample.csv", make_rows(300))
    write_csv(tmp_path / "data" / "intents.csv", make_intent_rows(240))
    write_conll(tmp_path / "data" / "ner.conll", make_sentences(250))
    params = tiny_params(tiny_model)
    intents = yaml.safe_load(yaml.safe_dump(params["sentiment"]))  # the same settings: a second pipeline of the type
    intents.update(type="text_classification", registry={"name": "support-intents"})
    intents["data"].update(source="data/intents.csv", incoming="data/incoming/intents")
    intents["validate"]["labels"] = list(INTENT_VOCAB)
    params.update(pipelines=["sentiment", "intents", "ner"], intents=intents, ner=ner_params(tiny_model, model={"crf": True})["ner"])
    init_repo(tmp_path, params)
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=tmp_path)

    output = sh("dvc", "repro", cwd=tmp_path)
    assert stages_run(output) == every_stage("sentiment") | every_stage("intents") | every_stage("ner")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    for registry in ("fin-sentiment", "support-intents", "ner"):
        assert str(client.get_model_version_by_alias(registry, "champion").version) == "1"
    labels = yaml.safe_load((tmp_path / "metrics" / "intents.json").read_text())["test"]["per_class"]
    assert set(labels) == set(INTENT_VOCAB)
    shown = sh("dvc", "metrics", "show", cwd=tmp_path)
    assert all(f"metrics/{name}.json" in shown for name in ("sentiment", "intents", "ner")) and "train_summary" not in shown

    metrics = yaml.safe_load((tmp_path / "metrics" / "sentiment.json").read_text())
    assert metrics["val"]["f1_macro"] > 0.5 and "per_class" in metrics["test"]
    champion = client.get_model_version_by_alias("fin-sentiment", "champion")
    head = sh("git", "rev-parse", "HEAD", cwd=tmp_path).strip()
    assert champion.tags["git_commit"] == head
    run = client.get_run(champion.run_id)
    assert run.data.tags["data_hash"] == champion.tags["data_hash"]
    assert "val_f1_macro" in run.data.metrics and "train.learning_rate" in run.data.params

    ner = yaml.safe_load((tmp_path / "metrics" / "ner.json").read_text())
    assert {"f1", "precision", "recall", "per_type"} <= ner["val"].keys() and ner["val"]["f1"] > 0.8
    promotion = yaml.safe_load((tmp_path / "reports" / "ner" / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["metric"] == "val_f1"
    assert client.get_model_version_by_alias("ner", "champion").tags["val_f1"] == f"{ner['val']['f1']:.4f}"

    unchanged = sh("dvc", "repro", cwd=tmp_path)
    assert stages_run(unchanged) == {"sources"}  # it always looks at the source files; they did not change
    assert "Stage 'collect@sentiment' didn't change, skipping" in unchanged
    assert "Stage 'train@sentiment' didn't change, skipping" in unchanged

    params["sentiment"]["promotion"]["min_delta"] = 0.05
    write_params(tmp_path, params)
    assert stages_run(sh("dvc", "repro", cwd=tmp_path)) == {"sources", "register@sentiment"}
    assert str(client.get_model_version_by_alias("fin-sentiment", "champion").version) == "1"  # v2 is the same model: no gain of 0.05

    params["intents"]["train"]["seed"] = 7  # a retrain of one pipeline: only its stages run, only its registry moves
    write_params(tmp_path, params)
    rerun = stages_run(sh("dvc", "repro", cwd=tmp_path))
    assert rerun == {"sources", "train@intents", "evaluate@intents", "register@intents"}
    assert len(client.search_model_versions("name='support-intents'")) == 2
    assert len(client.search_model_versions("name='fin-sentiment'")) == 2 and len(client.search_model_versions("name='ner'")) == 1

    write_csv(tmp_path / "data" / "sample.csv", make_rows(330))  # new data: everything downstream re-runs
    assert {"collect@sentiment", "train@sentiment"} <= stages_run(sh("dvc", "repro", cwd=tmp_path))
    sh("dvc", "plots", "show", "-o", "plots_out", cwd=tmp_path)
    assert (tmp_path / "plots_out" / "index.html").exists()
