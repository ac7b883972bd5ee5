"""Two pipelines retrained side by side against one after the other, on the bundled samples.

Each repeat starts from a fresh clone of this repository's last commit with `pipelines: [sentiment,
intents]` committed in it (nothing in a DVC cache, run cache or MLflow store to restore from), and
retrains both pipelines with the retrain flow, `python -m flows.retrain --pipeline NAME`, against
one temporary Prefect server started before the clock:
- one after the other: sentiment, then intents, each process free to use every core (torch takes
  as many threads as the cores it may run on: 2 here);
- side by side: both processes at once, each in its own workspace (a git worktree), each pinned to
  a core of its own (1 thread each).
The two ways alternate within each repeat (which goes first alternates too); wall time is from the
first process's start to the last one's end. Also records each run's test macro-F1, so a speed-up
is not bought with a worse model.

    python benchmarks/parallel_retrain.py [--repeats 3]

Writes benchmarks/results/parallel_retrain.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, benchmark_parser, cpu_facts, timing, write_result

PIPELINES = ("sentiment", "intents")
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
       "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def fresh_clone() -> Path:
    """A clone of the last commit, both pipelines in `pipelines`, committed (a workspace runs the committed params)."""
    clone = Path(tempfile.mkdtemp(prefix="bench-parallel-")) / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    (clone / "params.yaml").write_text(yaml.safe_dump({**params, "pipelines": list(PIPELINES)}, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "both pipelines"],
                   cwd=clone, check=True)
    return clone


def start(clone: Path, pipeline: str, api_url: str, core: int | None) -> subprocess.Popen:
    """The retrain flow of one pipeline in a fresh process, pinned to `core` when given."""
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    return subprocess.Popen([sys.executable, "-m", "flows.retrain", "--pipeline", pipeline], cwd=clone,
                            env={**ENV, "PREFECT_API_URL": api_url}, preexec_fn=pin,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, pipeline: str) -> None:
    _, errors = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"retrain of {pipeline} failed (exit {process.returncode}):\n{errors[-3000:]}")


def test_f1(clone: Path, pipeline: str) -> float:
    from pipeline.records import load_json

    return load_json(clone / ".dvc/tmp/workspaces" / pipeline / "metrics" / f"{pipeline}.json")["test"]["f1_macro"]


def one_after_the_other(api_url: str) -> tuple[float, dict]:
    clone = fresh_clone()
    started = time.perf_counter()
    for pipeline in PIPELINES:
        finish(start(clone, pipeline, api_url, None), pipeline)
    return time.perf_counter() - started, {p: test_f1(clone, p) for p in PIPELINES}


def side_by_side(api_url: str) -> tuple[float, dict]:
    clone = fresh_clone()
    cores = sorted(os.sched_getaffinity(0))
    started = time.perf_counter()
    processes = [start(clone, pipeline, api_url, cores[i % len(cores)]) for i, pipeline in enumerate(PIPELINES)]
    for process, pipeline in zip(processes, PIPELINES):
        finish(process, pipeline)
    return time.perf_counter() - started, {p: test_f1(clone, p) for p in PIPELINES}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    os.environ.update(ENV)  # the temporary Prefect server inherits it: no telemetry
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    ways = {"one_after_the_other": one_after_the_other, "side_by_side": side_by_side}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    scores: dict[str, list[dict]] = {way: [] for way in ways}
    with prefect_test_harness(server_startup_timeout=120):
        api_url = PREFECT_API_URL.value()
        for repeat in range(arguments.repeats):
            order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
            for way in order:
                print(f"== repeat {repeat + 1}/{arguments.repeats}: {way}", flush=True)
                wall, f1 = ways[way](api_url)
                seconds[way].append(wall)
                scores[way].append(f1)
                print(f"   {wall:.1f} s, test macro-F1 {f1}", flush=True)
    ratios = [a / b for a, b in zip(seconds["one_after_the_other"], seconds["side_by_side"])]
    write_result("parallel_retrain", [], {
        "wall_seconds": {way: timing(values) for way, values in seconds.items()},
        "speedup_side_by_side": timing(ratios),
        "threads_per_run": {"one_after_the_other": len(os.sched_getaffinity(0)), "side_by_side": 1},
        "test_f1_macro": scores,
        "pipelines": list(PIPELINES),
        **cpu_facts(),
    })


if __name__ == "__main__":
    main()
