"""The ONNX Runtime export (`registry.onnx`): made and checked at register, logged with the version,
served with `serving.runtime: onnx`, refused when it scores too far below its model."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.errors import ConfigError
from pipeline.params import ServingConfig
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from pipeline.serving.serve import Service, create_app, load_served
from pipeline.stages import register
from pipeline.tasks import get_task, load_params
from pipeline.techniques import export
from tests.conftest import tiny_params, write_params
from tests.ner_data import ner_params
from tests.test_promotion import NAME, train_and_register
from tests.test_serve import NEUTRAL, POSITIVE

pytestmark = pytest.mark.model

PATHS = PipelinePaths("sentiment")


def version_tag(version: str) -> str | None:
    import mlflow

    return mlflow.MlflowClient().get_model_version(NAME, version).tags.get(export.VERSION_TAG)


def test_the_int8_export_is_checked_logged_and_served(workspace, tiny_model, monkeypatch):
    decision = train_and_register(tiny_model, 1.0e-3, sentiment__train__epochs=6, sentiment__registry__onnx="int8")
    report = load_json(PATHS.export_report)
    assert report["kept"] and report["precision"] == "int8", report
    assert report["drop"] <= report["max_drop"] == 0.005 and report["label_agreement"] >= 0.95
    assert version_tag(decision["challenger"]["version"]) == "int8"

    task = get_task("sentiment", load_params().pipeline("sentiment"))
    uri = f"models:/{NAME}@champion"
    downloads = workspace / "downloads"
    downloads.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(downloads))
    served = load_served(task, uri, "onnx")
    assert served.runtime == "onnx-int8" and isinstance(served.model, export.OnnxClassifier)
    torch_served = load_served(task, uri, "torch")
    assert not any(downloads.iterdir())  # each loaded into memory, the download removed (a hot-swap leaves none)
    test = load_records(PATHS.split("test"))  # texts of every length, in batches the export was not traced with
    from_onnx = task.predict(served.model, served.tokenizer, test)
    from_torch = task.predict(torch_served.model, torch_served.tokenizer, test)
    agreement = sum(a["label"] == b["label"] for a, b in zip(from_onnx, from_torch)) / len(test)
    assert agreement >= 0.95
    assert [p["score"] for p in from_onnx] == pytest.approx([p["score"] for p in from_torch], abs=0.05)

    service = Service(task, uri, ServingConfig(reload_seconds=60), served)
    with TestClient(create_app({"sentiment": service}, "sentiment")) as client:
        assert client.get("/version").json()["runtime"] == "onnx-int8"
        answer = client.post("/predict", json={"texts": [POSITIVE, NEUTRAL]}).json()
        assert [p["label"] for p in answer["predictions"]] == ["positive", "neutral"]


def sabotaged_export(model, tokenizer, folder: Path, precision: str) -> None:
    """The real export with its classifier's weights negated afterwards: a broken export the check must catch."""
    import onnx
    from onnx import numpy_helper

    real_export(model, tokenizer, folder, precision)
    graph = onnx.load(str(folder / export.ONNX_FILE))
    for weights in graph.graph.initializer:
        if "classifier" in weights.name:
            weights.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name))
    onnx.save(graph, str(folder / export.ONNX_FILE))


real_export = export.export


def test_an_export_scoring_too_low_is_refused_and_serving_falls_back(workspace, tiny_model, monkeypatch):
    monkeypatch.setattr(export, "export", sabotaged_export)
    decision = train_and_register(tiny_model, 1.0e-3, sentiment__registry__onnx="fp32")
    report = load_json(PATHS.export_report)
    assert not report["kept"] and "below the model's" in report["reason"]
    assert decision["promoted"]  # the model itself is fine: only its export is not kept
    assert version_tag(decision["challenger"]["version"]) == "refused"
    task = get_task("sentiment", load_params().pipeline("sentiment"))
    assert load_served(task, f"models:/{NAME}@champion", "onnx").runtime == "torch"


def test_registry_onnx_is_refused_for_tasks_without_an_export(tmp_path, tiny_model):
    params = ner_params(tiny_model, registry={"onnx": "int8"})
    loaded = load_params(write_params(tmp_path, params))
    with pytest.raises(ConfigError, match="ner.registry.onnx: the ner task has no ONNX export"):
        register.run(get_task("ner", loaded.pipeline("ner")), loaded, PipelinePaths("ner"))


def test_registry_onnx_takes_int8_fp32_or_null(tmp_path, tiny_model):
    params = tiny_params(tiny_model, sentiment__registry__onnx="int4")
    with pytest.raises(ConfigError, match="'sentiment.registry.onnx' must be one of int8, fp32"):
        load_params(write_params(tmp_path, params))
    assert load_params(Path(__file__).parents[1] / "params.yaml").pipeline("sentiment").registry.onnx == "int8"
