"""Orchestration overhead on the bundled samples: the no-op `dvc repro`, the Prefect retrain flow
against `dvc repro` doing the same work, and the stages around train against train itself.

In a fresh clone of this repository's last commit (its own params.yaml: sentiment and NER):
1. `dvc repro` from nothing, timed;
2. `dvc repro` with nothing changed, five times (the median is reported);
3. everything made by 1 removed (outputs, dvc.lock, DVC's cache and run cache, the MLflow
   store), then the retrain flow (flows/retrain.py: one Prefect task per stage, each a
   `dvc repro --single-item`), timed from its call to its return, against a temporary Prefect
   server started before the clock (a deployment talks to a server that is already up). The
   flow's task runs give each stage's time.
Also records each task's val and test scores from step 1 (what `make run` gives on the samples).
Writes benchmarks/results/overhead.json.

    python benchmarks/overhead.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, benchmark_parser, write_result

TARGET = {"noop_repro_seconds": 3.0, "flow_over_repro": 1.10}
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
       "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
MADE_BY_REPRO = ("data/raw", "data/clean", "data/quarantine", "data/split", "data/augmented", "models", "metrics",
                 "reports", ".checkpoints", "dvc.lock", ".dvc/cache", "mlflow/mlflow.db", "mlflow/artifacts")


def timed_repro(workspace: Path) -> float:
    """Seconds of one `dvc repro` in `workspace`."""
    started = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=workspace, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def scores(workspace: Path, pipelines: list[str]) -> dict:
    """Each pipeline's val and test scores from the repro's metrics (the per-class detail left out)."""
    found = {}
    for pipeline in pipelines:
        metrics = json.loads((workspace / "metrics" / f"{pipeline}.json").read_text())
        found[pipeline] = {split: {key: round(value, 4) if isinstance(value, float) else value
                                   for key, value in figures.items() if isinstance(value, (float, int))}
                           for split, figures in metrics.items()}
    return found


def remove_outputs(workspace: Path) -> None:
    """Back to a fresh clone: nothing DVC could restore instead of running a stage."""
    for name in MADE_BY_REPRO:
        path = workspace / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def timed_flow(workspace: Path) -> tuple[float, dict[str, float]]:
    """(seconds of the retrain flow, seconds of each of its stage tasks) against a temporary server."""
    os.environ.update(ENV)
    os.chdir(workspace)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        state = retrain(return_state=True)
        seconds = time.perf_counter() - started
        assert state.is_completed(), state
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return seconds, {run.name: run.total_run_time.total_seconds() for run in runs}


def main() -> None:
    benchmark_parser(__doc__).parse_args()
    started = time.time()
    workspace = Path(tempfile.mkdtemp(prefix="bench-overhead-")) / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workspace)], check=True)

    print("== dvc repro from nothing", flush=True)
    repro_seconds = timed_repro(workspace)
    pipelines = yaml.safe_load((workspace / "params.yaml").read_text())["pipelines"]
    sample_scores = scores(workspace, pipelines)
    print("== dvc repro with nothing changed", flush=True)
    noop = [timed_repro(workspace) for _ in range(5)]
    remove_outputs(workspace)
    print("== the retrain flow from nothing", flush=True)
    flow_seconds, stages = timed_flow(workspace)

    train = sum(seconds for name, seconds in stages.items() if name.startswith("train@"))
    result = {
        "noop_repro_seconds": round(statistics.median(noop), 2),
        "noop_repro_runs": [round(s, 2) for s in noop],
        "repro_seconds": round(repro_seconds, 1),
        "flow_seconds": round(flow_seconds, 1),
        "flow_over_repro": round(flow_seconds / repro_seconds, 3),
        "train_seconds": round(train, 1),
        "other_stages_seconds": round(sum(stages.values()) - train, 1),
        "other_stages_over_train": round((sum(stages.values()) - train) / train, 3),
        "stage_seconds": {name: round(seconds, 1) for name, seconds in sorted(stages.items())},
        "pipelines": pipelines,
        "sample_scores": sample_scores,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=workspace, capture_output=True, text=True,
                                 check=True).stdout.strip(),
        "cpu_threads": len(os.sched_getaffinity(0)),
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("overhead", [], result)


if __name__ == "__main__":
    main()
