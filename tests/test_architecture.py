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


def test_config_classes_pickled_under_their_old_module_still_load():
    import pickle

    from pipeline import task_model  # noqa: F401  (registers the old path)
    from pipeline.params import TrainConfig
    from pipeline.tasks.translation import TranslationConfig

    for name, cls in (("TranslationConfig", TranslationConfig), ("TrainConfig", TrainConfig)):
        assert pickle.loads(f"cpipeline.config\n{name}\n.".encode()) is cls  # as in a model registered before the move


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
