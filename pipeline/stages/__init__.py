"""The stages dvc.yaml runs, in order, and how one is run.

`sources` runs once for every pipeline; the others run per pipeline. Each stage module has one `run(task,
params, paths)`: it reads the files an earlier stage wrote (`paths.inputs`) and writes its own, so
DVC can cache and skip it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pipeline import distributed, tracking
from pipeline.errors import OutputError, UsageError
from pipeline.paths import PipelinePaths, blocking_file
from pipeline.tasks import get_task, load_params

SOURCES = "sources"  # the one stage for every task: fingerprints their inputs (pipeline/stages/sources.py)
STAGES = ("collect", "validate", "split", "augment", "pretrain", "train", "evaluate", "register")  # per pipeline, in order


def run_stage(stage: str, pipeline: str, params_file: Path) -> None:
    """Run one stage of one task (`sources`: of every task) with the settings in the params file."""
    params = load_params(params_file)
    if stage == SOURCES:
        importlib.import_module("pipeline.stages.sources").run(params)
        return
    config = params.pipeline(pipeline)
    if stage == "train" and config.train.processes > 1 and not distributed.launched():
        relaunch_under_torchrun(config.train.processes, pipeline, params_file)
        return
    paths = PipelinePaths(pipeline)
    require_inputs(stage, paths)
    with tracking.registry_errors(f"{stage}[{pipeline}]"):  # a tracking server, or its artifact store, failing: one line
        importlib.import_module(f"pipeline.stages.{stage}").run(get_task(pipeline, config), params, paths)


def require_inputs(stage: str, paths: PipelinePaths) -> None:
    """A UsageError naming the first input of `stage` that no earlier stage has written yet, and the stage that writes it."""
    missing = [path for path in paths.inputs(stage) if not path.exists()]
    if missing and (blocker := blocking_file(missing[0].parent)):
        raise OutputError(f"cannot read {missing[0]}: {blocker} is a file, not a folder")
    if missing:
        writer = paths.writer(missing[0])
        raise UsageError(f"{missing[0]}: not found: the {writer} stage writes it "
                         f"(`dvc repro {writer}@{paths.pipeline}` runs the stages up to it)")


def relaunch_under_torchrun(processes: int, pipeline: str, params_file: Path) -> None:
    """Run the train stage as `processes` DDP workers; their exit code is this process's when they fail."""
    code = distributed.relaunch(processes, ["--params", str(params_file), "stage", "train", "--pipeline", pipeline])
    if code:
        print(f"train[{pipeline}]: the DDP workers failed (exit {code}); their output is above", file=sys.stderr)
        raise SystemExit(code)
