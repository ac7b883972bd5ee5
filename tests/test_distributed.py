"""`train.processes: 2`: the train stage runs as two DDP workers under torchrun (gloo on CPU)."""

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.records import load_json
from pipeline.stages.train import per_worker_batch_size
from tests.conftest import tiny_params, write_params

TRAIN = {"sentiment__train__epochs": 6, "sentiment__train__batch_size": 16}  # as in test_cli: learns the tiny data


def train_and_evaluate(tiny_model: Path, processes: int) -> tuple[dict, dict]:
    """(train summary, test metrics) of the train and evaluate stages with `processes` workers."""
    write_params(Path("."), tiny_params(tiny_model, sentiment__train__processes=processes, **TRAIN))
    for stage in ("train", "evaluate"):
        assert main(["stage", stage]) == 0
    return load_json(Path("reports/sentiment/train_summary.json")), load_json(Path("metrics/sentiment.json"))["test"]


@pytest.mark.e2e
def test_two_ddp_workers_reach_the_quality_of_one_process(workspace, tiny_model, capsys):
    import mlflow

    for stage in ("collect", "validate", "split", "augment"):
        assert main(["stage", stage]) == 0
    one_summary, one = train_and_evaluate(tiny_model, 1)
    two_summary, two = train_and_evaluate(tiny_model, 2)
    output = capsys.readouterr().out
    assert "starting 2 DDP workers" in output
    with capsys.disabled():
        print(f"\nDDP: test macro-F1 one process {one['f1_macro']:.3f}, two workers {two['f1_macro']:.3f}; "
              f"{json.dumps(one_summary)} / {json.dumps(two_summary)}")
    assert (one_summary["processes"], two_summary["processes"]) == (1, 2)
    assert one["f1_macro"] >= 0.9 and two["f1_macro"] >= one["f1_macro"] - 0.05
    runs = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert len(runs) == 2  # one per training: only rank 0 talks to MLflow


def test_the_batch_must_split_evenly_between_the_workers(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert per_worker_batch_size(32) == 16
    with pytest.raises(ConfigError, match="train.batch_size 15 does not split evenly between 2 DDP workers"):
        per_worker_batch_size(15)
