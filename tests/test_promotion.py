"""Fair champion/challenger promotion against a real MLflow store (SQLite in a temp dir), also with two
challengers registered at the same moment by two processes."""

import os
import shutil
import subprocess
import sys
import time
from contextlib import chdir
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from pipeline.registry import load_registered, promotion_lock
from pipeline.stages import register, run_stage
from pipeline.stages.evaluate import score
from pipeline.tasks import get_task, load_params
from tests.conftest import make_rows, tiny_params, write_csv, write_params

pytestmark = pytest.mark.model

PATHS = PipelinePaths("sentiment")
PARAMS = Path("params.yaml")
NAME = "fin-sentiment"
UNTRAINED = 1e-12  # a learning rate that leaves the model as initialised: a useless one


def train_and_register(tiny_model: Path, learning_rate: float, **overrides) -> dict:
    """Train a tiny model (learning_rate UNTRAINED gives a useless one) and run the register stage."""
    write_params(Path("."), tiny_params(tiny_model, sentiment__train__learning_rate=learning_rate, **overrides))
    for stage in ("collect", "validate", "split", "augment", "train", "evaluate", "register"):
        run_stage(stage, "sentiment", PARAMS)
    return load_json(PATHS.promotion)


def aliases() -> dict[str, str]:
    import mlflow

    return {alias: str(version) for alias, version in mlflow.MlflowClient().get_registered_model(NAME).aliases.items()}


def test_first_better_and_worse_models(workspace, tiny_model):
    import mlflow

    first = train_and_register(tiny_model, UNTRAINED)
    assert first["promoted"] and first["champion"] is None and first["challenger"]["version"] == "1"
    assert aliases() == {"champion": "1"}

    better = train_and_register(tiny_model, 1.0e-3)
    assert better["promoted"] and better["delta"] > 0
    assert better["champion"] == {"version": "1", "score": pytest.approx(first["challenger"]["score"])}
    assert aliases() == {"champion": "2"}
    test = better["test"]
    assert test["method"] == "paired_bootstrap" and test["resamples"] == 1000 and test["examples"] == len(load_records(PATHS.split("val")))
    assert 0 < test["interval"][0] <= better["delta"] <= test["interval"][1] and test["p_value"] == 0

    worse = train_and_register(tiny_model, UNTRAINED, sentiment__train__seed=7)
    assert not worse["promoted"] and worse["alias"] == "challenger"
    assert aliases() == {"champion": "2", "challenger": "3"}

    client = mlflow.MlflowClient()
    version = client.get_model_version(NAME, "3")
    assert version.description.startswith("Not promoted: validation f1_macro") and "95% interval" in version.description
    assert {"git_commit", "data_hash", "params_hash", "run_id", "val_f1_macro"} <= version.tags.keys()
    run = client.get_run(version.tags["run_id"])
    assert {"val_f1_macro", "test_f1_macro", "train_seconds"} <= run.data.metrics.keys()
    assert run.data.metrics["promotion_p_value"] == worse["test"]["p_value"] and run.data.tags["promotion_reason"] == worse["reason"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for folder in ("plots", "data") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"plots/confusion_test.png", "plots/learning_curves.png", "data/validation.json", "data/data_docs", "promotion.json"} <= artifacts


def test_equal_score_is_not_promoted(workspace, tiny_model):
    train_and_register(tiny_model, 1.0e-3)
    run_stage("register", "sentiment", PARAMS)  # the same model again: identical score
    decision = load_json(PATHS.promotion)
    assert decision["delta"] == 0 and not decision["promoted"]
    assert decision["test"]["interval"] == [0, 0] and decision["test"]["p_value"] == 1
    assert aliases() == {"champion": "1", "challenger": "2"}


def test_a_first_model_below_min_score_does_not_become_champion(workspace, tiny_model):
    broken = train_and_register(tiny_model, UNTRAINED, sentiment__promotion__min_score=0.5)
    assert not broken["promoted"] and broken["champion"] is None and "below min_score 0.5" in broken["reason"]
    assert aliases() == {"challenger": "1"}
    good = train_and_register(tiny_model, 1.0e-3, sentiment__promotion__min_score=0.5)
    assert good["promoted"] and good["champion"] is None and "reaches min_score 0.5" in good["reason"]
    assert aliases() == {"champion": "2", "challenger": "1"}


def test_start_from_champion_refines_the_champion_and_falls_back_to_the_base_before_there_is_one(workspace, tiny_model, capsys):
    import mlflow

    first = train_and_register(tiny_model, 1.0e-3, sentiment__train__start_from="champion")
    assert first["promoted"] and "no champion yet: starting from" in capsys.readouterr().out

    same = train_and_register(tiny_model, UNTRAINED, sentiment__train__start_from="champion")  # the champion's weights, unchanged
    assert "starting from the champion, fin-sentiment v1" in capsys.readouterr().out
    assert same["delta"] == 0 and not same["promoted"], "a model that starts from the champion and learns nothing scores as it"
    run = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version(NAME, "2").tags["run_id"])
    assert run.data.params["started_from"] == "start-fin-sentiment-v1"
    assert not list(PATHS.checkpoints.glob("start-*")), "the champion's copy is removed once training is done"

    with pytest.raises(ConfigError, match="predicts \\['negative', 'neutral', 'positive'\\].*set start_from: base"):
        train_and_register(tiny_model, 1.0e-3, sentiment__train__start_from="champion",
                           sentiment__validate__labels=["positive", "neutral", "negative"])
    assert aliases() == {"champion": "1", "challenger": "2"}


def test_a_failing_register_leaves_the_aliases_alone(workspace, tiny_model, monkeypatch):
    train_and_register(tiny_model, UNTRAINED)
    write_params(Path("."), tiny_params(tiny_model))
    for stage in ("train", "evaluate"):
        run_stage(stage, "sentiment", PARAMS)

    def broken_upload(*args, **kwargs):
        raise OSError("artifact store full")

    monkeypatch.setattr(register, "log_model", broken_upload)
    with pytest.raises(OSError):
        run_stage("register", "sentiment", PARAMS)
    assert aliases() == {"champion": "1"}


def test_the_champion_is_rescored_on_todays_validation_split(workspace, tiny_model):
    write_csv(Path("data/sample.csv"), make_rows(120))
    train_and_register(tiny_model, 1.0e-3)
    write_csv(Path("data/sample.csv"), make_rows(400))  # more data: a larger validation split
    decision = train_and_register(tiny_model, 1.0e-3, sentiment__train__seed=3)

    task = get_task("sentiment", load_params().pipeline("sentiment"))
    model, tokenizer = load_registered(task, f"models:/{NAME}/1")
    val = load_records(PATHS.split("val"))
    assert decision["champion"]["score"] == pytest.approx(score(task, model, tokenizer, val)[0]["f1_macro"])
    assert decision["challenger"]["score"] == pytest.approx(load_json(PATHS.metrics)["val"]["f1_macro"])


def test_register_without_evaluates_predictions_says_what_to_run(workspace):
    from pipeline.errors import UsageError
    from pipeline.records import save_records

    task = get_task("sentiment", load_params().pipeline("sentiment"))
    val = [{"text": "Profit rose.", "label": "positive"}, {"text": "Sales fell.", "label": "negative"}]
    with pytest.raises(UsageError, match=r"val_predictions.jsonl not found: run `dvc repro evaluate@sentiment` first"):
        register.challenger_predictions(task, PATHS, val)
    save_records(PATHS.val_predictions, [{"label": "positive", "score": 0.9}])  # from an older, smaller split
    with pytest.raises(UsageError, match="holds 1 predictions for 2 validation examples"):
        register.challenger_predictions(task, PATHS, val)


def trained_elsewhere(folder: Path, tiny_model: Path, **overrides) -> Path:
    """Another workspace on the same data and the same MLflow store (linked), its model trained and evaluated,
    not registered yet."""
    folder.mkdir()
    (folder / "mlflow").symlink_to(Path("mlflow").resolve())
    (folder / "data").mkdir()
    shutil.copy("data/sample.csv", folder / "data" / "sample.csv")
    write_params(folder, tiny_params(tiny_model, **overrides))
    with chdir(folder):
        for stage in ("collect", "validate", "split", "augment", "train", "evaluate"):
            run_stage(stage, "sentiment", PARAMS)
    return folder


def test_two_promotions_at_once_end_with_the_better_model_as_champion(workspace, tiny_model):
    plain = {"sentiment__promotion": {"test": "none", "min_delta": 0.0}}  # the order of judging alone decides
    useless = train_and_register(tiny_model, UNTRAINED, **plain)
    medium = trained_elsewhere(workspace / "medium", tiny_model, sentiment__train__epochs=1, **plain)
    best = trained_elsewhere(workspace / "best", tiny_model, **plain)
    scores = [load_json(folder / PATHS.metrics)["val"]["f1_macro"] for folder in (medium, best)]
    assert useless["challenger"]["score"] < scores[0] < scores[1], "the three models must differ for this test"

    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}  # as typed by hand
    what, lock = promotion_lock(NAME)
    with lock:  # held here until both have registered their version and wait at it: they judge one after the other
        logs = [folder / "register.log" for folder in (medium, best)]
        runs = [subprocess.Popen([Path(sys.executable).parent / "finetune", "stage", "register", "--pipeline", "sentiment"],
                                 cwd=folder, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
                for folder, log in zip((medium, best), logs)]
        deadline = time.monotonic() + 300
        while not all(f"waiting for {what}" in log.read_text() for log in logs) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [log.read_text()[-2000:] for log in logs]

    first, second = sorted((load_json(folder / PATHS.promotion) for folder in (medium, best)),
                           key=lambda d: d["champion"]["version"] != "1")  # the first judged met the useless champion
    assert first["champion"]["version"] == "1" and first["promoted"]
    assert second["champion"] == {"version": first["challenger"]["version"], "score": pytest.approx(first["challenger"]["score"])}
    assert aliases()["champion"] == load_json(best / PATHS.promotion)["challenger"]["version"]
