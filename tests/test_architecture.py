"""The architecture holds: layered imports without cycles (import-linter, pyproject.toml), and a new
task type is one module plus one registry line (tests/extra_task.py runs through every stage)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from pipeline import tasks
from pipeline.errors import ConfigError, ModelError
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from pipeline.stages import STAGES, run_stage
from tests.conftest import ROOT, write_csv, write_params

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_imports_follow_the_layers():
    done = subprocess.run([str(LINT_IMPORTS)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """The groups of modules that import each other, directly or not (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = set()
            while not group or module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                cycles.append(group)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others():
    assert import_cycles(grimp.build_graph("pipeline", "flows")) == []


def test_a_registered_models_params_section_is_kept_as_yaml_and_read_back_through_the_checks(workspace):
    import yaml

    from pipeline.task_model import write_config

    config = tasks.load_params().pipeline("sentiment")
    saved = yaml.safe_load(write_config("sentiment", config, workspace / "config.yaml").read_text())
    assert saved["pipeline"] == "sentiment" and tasks.read_section("sentiment", saved["section"]) == config
    saved["section"]["train"]["epochz"] = 3  # a section the checks refuse is refused here too
    with pytest.raises(ConfigError, match="unknown key 'sentiment.train.epochz'"):
        tasks.read_section("sentiment", saved["section"])


def log_pickled_task_model(workspace: Path, tiny_model: Path, config: object, name: str) -> None:
    """Register a TaskModel as the code before the YAML config wrote it: pickled holding its pipeline and config."""
    import mlflow

    from pipeline import tracking
    from pipeline.task_model import TaskModel

    model_dir = workspace / "models" / name
    model, tokenizer = tasks.get_task("sentiment", tasks.load_params().pipeline("sentiment")).load_model(str(tiny_model))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    old = object.__new__(TaskModel)
    old.task_name, old.config = "sentiment", config
    with mlflow.start_run(experiment_id=tracking.configure("test")):
        mlflow.pyfunc.log_model(name="model", python_model=old, artifacts={"model": str(model_dir)}, pip_requirements=[],
                                registered_model_name=name)


@pytest.mark.model
def test_a_model_registered_with_its_config_pickled_still_loads_and_one_whose_classes_are_gone_says_so(workspace, tiny_model):
    import types

    from pipeline.registry import load_pyfunc_components

    log_pickled_task_model(workspace, tiny_model, tasks.load_params().pipeline("sentiment"), "pickled")
    model, tokenizer = load_pyfunc_components("models:/pickled/1")
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"} and tokenizer("profit rose")["input_ids"]

    gone = types.ModuleType("config_classes_since_moved")  # as pipeline/config.py was, before task types had modules
    sys.modules[gone.__name__] = gone
    try:
        exec("from dataclasses import dataclass\n@dataclass\nclass TrainConfig:\n    epochs: int = 3", gone.__dict__)
        log_pickled_task_model(workspace, tiny_model, gone.TrainConfig(), "stranded")
    finally:
        del sys.modules[gone.__name__]
    with pytest.raises(ModelError, match="cannot load model 'models:/stranded/1': it was registered by an older finetune-pipeline "
                                         "whose config classes are gone .*; retrain and register it anew"):
        load_pyfunc_components("models:/stranded/1")


def question_rows(n: int, seed: int = 0) -> list[dict]:
    """Questions and statements about companies, each unique."""
    rng = random.Random(seed)
    companies = ["Norvik", "Halden", "Kestrel", "Ostara", "Solberg", "Aurora", "Fenwick", "Talvi"]
    questions = ["Did {c} raise its dividend in {y}?", "Will {c} report a loss in {y}?", "Is {c} listed in Helsinki since {y}?",
                 "How much did {c} earn in {y}?", "Why did {c} cut jobs in {y}?"]
    statements = ["{c} raised its dividend in {y}.", "{c} reported a loss in {y}.", "{c} has been listed in Helsinki since {y}.",
                  "{c} earned EUR 4 mn in {y}.", "{c} cut jobs in {y}."]
    rows = set()
    while len(rows) < n:
        label = rng.choice(["question", "statement"])
        template = rng.choice(questions if label == "question" else statements)
        rows.add((template.format(c=rng.choice(companies), y=rng.randint(1990, 2026)), label))
    return [{"text": text, "label": label} for text, label in sorted(rows)]


@pytest.mark.model
def test_a_task_type_from_outside_the_pipeline_runs_through_every_stage(workspace, tiny_model, monkeypatch):
    monkeypatch.setitem(tasks.TASK_TYPES, "question_detection", "tests.extra_task")  # the one registry line
    write_csv(workspace / "data" / "questions.csv", question_rows(300) + [{"text": "Profit?", "label": "question"}])
    write_params(workspace, {
        "pipelines": ["questions"],
        "tracking": {"experiment": "test"},
        "questions": {
            "type": "question_detection",
            "data": {"source": "data/questions.csv"},
            "validate": {"min_words": 2},
            "augment": {"copies": 1, "methods": ["swap"], "seed": 1},
            "model": {"name": str(tiny_model)},
            "train": {"epochs": 4, "learning_rate": 1.0e-3, "batch_size": 16, "max_length": 32, "warmup": 0.0, "seed": 1},
            "registry": {"name": "questions"},
        },
    })
    for stage in STAGES:
        run_stage(stage, "questions", Path("params.yaml"))
    paths = PipelinePaths("questions")
    assert [row["reason"] for row in load_records(paths.quarantine)] == ["words 1 outside 2..10000"]
    metrics = load_json(paths.metrics)
    assert metrics["test"]["accuracy"] >= 0.9, metrics  # the question mark is easy to learn
    decision = load_json(paths.promotion)
    assert decision["promoted"] and decision["metric"] == "val_accuracy"


def test_a_task_type_with_its_own_predictions_is_served_monitored_and_ranked_as_it_says(workspace, tiny_model, monkeypatch):
    """tests/topic_task.py predicts any number of topics per text: the server's request and response, the
    prediction log, the store's counts, the drift figures, the daily report and the labelling queue all
    follow what the task type answers, with nothing outside its module changed."""
    from fastapi.testclient import TestClient

    from pipeline.monitoring.drift import measure_drift, observations
    from pipeline.monitoring.reference import figures
    from pipeline.monitoring.report import write_daily
    from pipeline.monitoring.served import PredictionLog
    from pipeline.monitoring.store import daily_counts, new_served, open_store, stored_rows
    from pipeline.serving.serve import Served, Service, create_app
    from pipeline.techniques.active_learning import rank

    monkeypatch.setitem(tasks.TASK_TYPES, "topic_tagging", "tests.topic_task")  # the one registry line
    write_params(workspace, {
        "pipelines": ["topics"],
        "tracking": {"experiment": "test"},
        "monitoring": {"db": "monitoring/predictions.db"},
        "topics": {"type": "topic_tagging", "data": {"source": "data/sample.csv"}, "model": {"name": str(tiny_model)},
                   "validate": {"labels": ["earnings", "jobs", "markets"]}, "registry": {"name": "topics"}},
    })
    params = tasks.load_params()
    assert params.monitoring.pipelines == ["topics"]  # its predictions count topics, so it is monitored by default
    task = tasks.get_task("topics", params.pipeline("topics"))
    model, tokenizer = task.load_model(str(tiny_model))  # a random head: each topic about a third probable
    texts = ["Nokia cut 500 jobs.", "Shares of Fortum rose 3%.", "Operating profit doubled.", "Kone hired engineers."]

    log = PredictionLog(params.monitoring.db, "topics", params.monitoring.pipelines, share=1.0, capacity=100)
    served = Served("topics", "1", "champion", "run", "torch", model, tokenizer)
    service = Service(task, "models:/topics@champion", params.serving, served, log)
    with TestClient(create_app({"topics": service}, "topics")) as client:
        every = client.post("/topics/predict", json={"texts": texts[:2], "threshold": 0.01}).json()["predictions"]
        none = client.post("/topics/predict", json={"texts": texts[2:], "threshold": 0.99}).json()["predictions"]
        refused = client.post("/topics/predict", json={"texts": texts, "top_k": 2})
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert [len(p["topics"]) for p in every + none] == [3, 3, 0, 0]  # each request's threshold, applied to its own texts
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "top_k"]  # no classifier's field
    assert set(schemas["TopicsRequest"]["properties"]) == {"texts", "threshold"}
    assert schemas["TopicResponse"]["properties"]["predictions"]["items"] == {"$ref": "#/components/schemas/Topics"}

    engine = open_store(params.monitoring.db, "topics")  # the server stopped: its answers are written and handed over
    logged = stored_rows(engine, "topics", new_served(engine, "topics"), task.counts.several)
    assert [sorted(observation["counted"]) for _, observation, _ in logged] == [["earnings", "jobs", "markets"]] * 2 + [[], []]
    (day, (answered, counted)), = daily_counts(engine, "topics", task.counts.several).items()
    assert answered == 4 and counted == {"earnings": 2, "jobs": 2, "markets": 2}

    reference = figures(task, [{"text": t} for t in texts], observations(task, task.predict(model, tokenizer, [{"text": t} for t in texts])), [])
    drift = measure_drift(reference, texts, [observation for _, observation, _ in logged], params.monitoring, task.counts.shift)
    assert set(drift) == {"topic_mix", "confidence", "oov_rate"}
    report = {"pipeline": "topics"}
    assert write_daily(report, {day: (answered, counted)}, task, "1") == [Path("reports/monitor/topics/shares.png")]
    assert report["shares"][0]["shares"] == {"earnings": 1 / 3, "jobs": 1 / 3, "markets": 1 / 3}

    queue = rank(task, model, tokenizer, texts, "least_confidence", 2, 0.0, 0)
    scores = {t: p["score"] for t, p in zip(texts, task.predict(model, tokenizer, [{"text": t} for t in texts]))}
    assert [row["text"] for row in queue] == sorted(texts, key=scores.get)[:2]  # least confident first, by its own score
    assert all(set(row["predicted_label"].split()) <= {"earnings", "jobs", "markets"} for row in queue)


def test_each_stage_requires_what_dvc_yaml_says_it_depends_on():
    """PipelinePaths.inputs (what `finetune stage` requires before it runs a stage) and dvc.yaml's deps of each
    stage written by an earlier stage are one fact in two places: they must agree, and `writer` must name the
    stage whose outputs hold each input."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    paths = PipelinePaths("sentiment")

    def listed(stage: str, *keys: str) -> list[Path]:
        entries = [entry for key in keys for entry in stages[stage]["do"].get(key, [])]
        return [Path((next(iter(e)) if isinstance(e, dict) else e).replace("${item}", "sentiment")) for e in entries]

    written = {path: stage for stage in STAGES for path in listed(stage, "outs", "metrics", "plots")}

    def writer(path: Path) -> str | None:
        return next((stage for out, stage in written.items() if path == out or out in path.parents), None)

    only_sometimes = {"train": {paths.pretrained}}  # read with pretrain.enabled only; DVC tracks it always
    for stage in STAGES:
        from_stages = {dep for dep in listed(stage, "deps") if writer(dep)}
        assert set(paths.inputs(stage)) == from_stages - only_sometimes.get(stage, set()), stage
        assert all(paths.writer(path) == writer(path) for path in paths.inputs(stage)), stage
