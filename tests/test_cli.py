"""The `finetune` command as a user meets it: predictions, and bad input without a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.stages import run_stage
from tests.conftest import tiny_params, write_params

FINETUNE = Path(sys.executable).parent / "finetune"


def finetune(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(FINETUNE), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=600)


@pytest.mark.model
def test_predict_from_the_champion_a_folder_and_stdin(workspace, tiny_model, capsys):
    write_params(workspace, tiny_params(tiny_model, sentiment__train__epochs=6))
    for stage in ("collect", "validate", "split", "augment", "train", "evaluate", "register"):
        run_stage(stage, "sentiment", Path("params.yaml"))
    capsys.readouterr()
    assert main(["predict", "The company said profit rose in quarter.", "Its group shares listed on held year."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "neutral"]
    assert 0.0 < float(lines[0].split("\t")[1]) <= 1.0

    done = finetune("predict", "--model", "models/sentiment", cwd=workspace, stdin="The group said its quarter loss on weak shares.\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\t")[0] == "negative"


def test_bad_input_is_one_clear_line_not_a_traceback(workspace):
    (workspace / "data" / "sample.csv").write_bytes(b"text,label\nGood,positive\nCaf\xe9,neutral\n")
    done = finetune("stage", "collect", cwd=workspace)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "error: data/sample.csv: line 3, column 4: byte 0xe9 is not valid utf-8" in done.stderr


def test_unknown_params_key_is_reported(workspace):
    text = (workspace / "params.yaml").read_text().replace("min_delta:", "min_dleta:")
    (workspace / "params.yaml").write_text(text)
    done = finetune("stage", "register", cwd=workspace)
    assert done.returncode == 2 and "unknown key 'sentiment.promotion.min_dleta'" in done.stderr


def test_predict_without_texts_or_model_explains_how(workspace):
    (workspace / "empty.txt").write_text("\n")
    done = finetune("predict", "--file", "empty.txt", cwd=workspace)
    assert done.returncode == 2 and "no texts given" in done.stderr
    done = finetune("predict", "Profit rose", cwd=workspace)
    assert done.returncode == 4 and "Traceback" not in done.stderr
    assert "cannot load model 'models:/fin-sentiment@champion'" in done.stderr and "dvc repro" in done.stderr



@pytest.mark.parametrize("command", [["predict", "Profit rose"], ["select"]])
def test_an_unknown_pipeline_is_one_line(workspace, command):
    done = finetune(*command, "--pipeline", "sentimnt", cwd=workspace)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: params.yaml: no pipeline 'sentimnt' (did you mean 'sentiment'?)" in done.stderr
