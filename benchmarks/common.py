"""What the benchmark scripts share: params overrides, a scratch workspace, running the stages."""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

# benchmarks/peft.py shares its name with the peft package: find packages before this folder.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent] + [str(Path(__file__).parent)]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


PHRASEBANK = "financial_phrasebank/Sentences_50Agree.txt"


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark takes: its docstring as help, and `--set KEY=VALUE`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the pipeline's section")
    return parser


def phrasebank_params(overrides: list[str]) -> dict:
    """The sentiment params on Sentences_50Agree with augmentation off, so only the technique measured differs."""
    source = SHARED_DATA / PHRASEBANK
    if not source.exists():
        sys.exit(f"{source} not found: this benchmark needs ../shared/data beside the project")
    params = pipeline_params("sentiment", ["augment.copies=0", *overrides])
    params["sentiment"]["data"].update(source=str(source), format="phrasebank")
    return params


def pipeline_params(pipeline: str, overrides: list[str]) -> dict:
    """The project's params.yaml for one pipeline, with `KEY=VALUE` overrides of its section applied."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pipelines"] = [pipeline]
    return with_overrides(params, pipeline, overrides)


def with_overrides(params: dict, pipeline: str, overrides: list[str]) -> dict:
    """`params` with `KEY=VALUE` overrides of the pipeline's section applied; a key it lacks stops the run."""
    for override in overrides:
        key, value = override.split("=", 1)
        *sections, last = key.split(".")
        node = params[pipeline]
        for section in sections:
            node = node[section]
        if last not in node:
            sys.exit(f"--set {override}: {pipeline} has no key '{key}'")
        node[last] = yaml.safe_load(value)
    return params


def result_file(name: str, overrides: list[str]) -> Path:
    """benchmarks/results/NAME.json, or NAME-<overrides>.json for an experiment."""
    tag = "_".join(overrides).replace("/", "_")  # a model path may be overridden too
    return RESULTS / (f"{name}-{tag}.json" if overrides else f"{name}.json")


def run_in_scratch(params: dict, pipeline: str, stages: tuple[str, ...], prefix: str) -> Path:
    """Run stages of one pipeline in a new temp workspace holding `params`; returns the workspace (now cwd)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from pipeline.cli import run_stage

    workspace = Path(tempfile.mkdtemp(prefix=prefix))
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.chdir(workspace)
    for stage in stages:
        run_stage(stage, pipeline, Path("params.yaml"))
    return workspace


def scratch_splits(params: dict, pipeline: str, prefix: str) -> tuple:
    """Run the data stages of one pipeline in a new scratch workspace (now cwd); (task, config, train, val, test)."""
    run_in_scratch(params, pipeline, ("collect", "validate", "split", "pretrain"), prefix)
    return workspace_splits(pipeline)


def workspace_splits(pipeline: str) -> tuple:
    """(task, config, train, val, test) of the workspace (cwd) whose data stages have run, with this
    process's cores in use."""
    from pipeline.models import use_all_cores
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params

    use_all_cores()
    config = load_params(Path("params.yaml")).pipeline(pipeline)
    paths = PipelinePaths(pipeline)
    return (get_task(pipeline, config), config, *(load_records(paths.split(s)) for s in ("train", "val", "test")))


def run_variant(params: dict, pipeline: str, stages: tuple[str, ...], folder: Path = Path("."), cores: set[int] | None = None) -> dict:
    """Run stages with `params` in `folder` (default: the current workspace), in a fresh process so its
    peak memory is its own, pinned to `cores` when given (it then uses one thread per core).

    Returns the train summary, the metrics and the process's peak RSS in MB.
    """
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_json

    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code = (
        f"import resource, sys; sys.path.insert(0, {str(ROOT)!r}); from pipeline.cli import run_stage\n"
        f"for stage in {list(stages)!r}: run_stage(stage, {pipeline!r}, __import__('pathlib').Path('params.yaml'))\n"
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    done = run_pinned([sys.executable, "-c", code], cores, stdout=subprocess.PIPE, text=True, cwd=folder)
    print(done.stdout)  # progress went to stderr as it happened
    if done.returncode != 0:
        sys.exit(f"stages {stages} failed in {folder} (see above)")
    peak_kb = int(done.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    paths = PipelinePaths(pipeline)
    return {"summary": load_json(folder / paths.train_summary), "metrics": load_json(folder / paths.metrics),
            "peak_rss_mb": round(peak_kb / 1024)}


def run_pinned(command: list[str], cores: set[int] | None, **options: Any) -> subprocess.CompletedProcess:
    """`command` in a fresh process, offline, pinned to `cores` when given; `options` go to subprocess.run."""
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    return subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=pin, **options)


def fine_tune(task: Any, config: Any, train: list, val: list, seed: int, callbacks: list = ()) -> tuple[Any, Any, float]:
    """(model, tokenizer, training seconds) of the train stage's own trainer run with `seed` on `train`
    (val for early stopping; `callbacks` added to the Trainer's), in this process; the checkpoints go
    to a temp folder removed after."""
    import dataclasses

    from pipeline.paths import PipelinePaths
    from pipeline.stages.train import base_model_path, build_trainer

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fine-tune-") as output:
        trainer, tokenizer = build_trainer(task, config, train, val, Path(output), base_model_path(task, PipelinePaths(task.pipeline)),
                                           callbacks)
        trainer.train()
    return trainer.model, tokenizer, time.time() - started


def val_test_scores(task: Any, model: Any, tokenizer: Any, val: list, test: list) -> dict:
    """Val and test macro-F1 and accuracy of a classifier, rounded to 4 places."""
    found = {}
    for split, examples in (("val", val), ("test", test)):
        metrics = task.metrics(examples, task.predict(model, tokenizer, examples))
        found.update({f"{split}_f1_macro": round(metrics["f1_macro"], 4), f"{split}_accuracy": round(metrics["accuracy"], 4)})
    return found


def cpu_minutes(seconds: float) -> float:
    """CPU-minutes of a run that kept this process's cores busy for `seconds`."""
    return round(seconds * len(os.sched_getaffinity(0)) / 60, 1)


def report_to_parent(found: dict) -> None:
    """What a child started by `apart` prints last: its result, for the parent to read."""
    print("RESULT " + json.dumps(found))


def apart(script: str, arguments: list[str], label: str) -> Callable[[set[int] | None], dict]:
    """A call for in_parallel: `script --one ARGUMENTS` in a fresh process pinned to the cores it is
    handed; returns the dict the child reported (report_to_parent) and prints its test macro-F1."""
    def call(cores: set[int] | None) -> dict:
        done = run_pinned([sys.executable, script, "--one", *arguments], cores, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"{label} failed (its output is above)")
        found = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
        print(f"{label}: test macro-F1 {found['test_f1_macro']:.4f}, {found['train_seconds']:.0f} s", flush=True)
        return found
    return call


def in_parallel(calls: list[Callable[[set[int] | None], Any]], jobs: int) -> list:
    """Run `calls` `jobs` at a time, handing each the share of this process's cores it may use (None
    with one job: all of them); their results in the order of `calls`."""
    from concurrent.futures import ThreadPoolExecutor

    cores = sorted(os.sched_getaffinity(0))
    free = [set(cores[i::jobs]) for i in range(jobs)] if jobs > 1 else [None]

    def one(call: Callable[[set[int] | None], Any]) -> Any:
        share = free.pop()
        try:
            return call(share)
        finally:
            free.append(share)

    with ThreadPoolExecutor(max_workers=len(free)) as pool:
        return list(pool.map(one, calls))


def run_folder(name: str, shared: tuple[str, ...] = ("data",)) -> Path:
    """Folder `name` of the current workspace for one run, linking the workspace's `shared` items
    (its data stages' output) so every run trains on the same files."""
    folder = Path(name)
    folder.mkdir(exist_ok=True)
    for item in shared:
        if not (folder / item).exists():
            (folder / item).symlink_to(Path(item).resolve())
    return folder


def run_seeds(params: dict, pipeline: str, seeds: list[int], jobs: int, stages: tuple[str, ...] = ("train", "evaluate")) -> list[dict]:
    """Train and evaluate once per training seed on the data stages already run in the current
    workspace, each seed in its own folder (data/ shared), `jobs` at once with the cores split
    between them. Returns run_variant's result for each seed, in the order of `seeds`."""

    def seeded(seed: int) -> Callable[[set[int] | None], dict]:
        def call(cores: set[int] | None) -> dict:
            folder = run_folder(f"seed-{seed}")
            variant = with_overrides(copy.deepcopy(params), pipeline, [f"train.seed={seed}"])
            return {"seed": seed, **run_variant(variant, pipeline, stages, folder, cores)}
        return call

    return in_parallel([seeded(seed) for seed in seeds], jobs)


def spread(values: list[float], digits: int = 4) -> dict:
    """Mean, sample standard deviation, min and max of repeated figures (seeds or timing repeats)."""
    import statistics

    return {"mean": round(statistics.mean(values), digits), "sd": round(statistics.stdev(values), digits) if len(values) > 1 else 0.0,
            "min": round(min(values), digits), "max": round(max(values), digits), "n": len(values)}


def timing(values: list[float], digits: int = 2) -> dict:
    """Median and min-max of timing repeats, with every repeat kept."""
    import statistics

    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "repeats": [round(v, digits) for v in values]}


def split_sizes(pipeline: str) -> dict[str, int]:
    """Examples in each split of the workspace (cwd) whose data stages have run."""
    from pipeline.paths import PipelinePaths

    paths = PipelinePaths(pipeline)
    return {s: sum(1 for _ in open(paths.split(s))) for s in ("train", "val", "test")}


def run_facts(params: dict, pipeline: str, overrides: list[str], started: float) -> dict:
    """What every result records besides its scores: time, memory, data sizes and settings."""
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_json
    from pipeline.tasks import load_params

    paths = PipelinePaths(pipeline)
    summary = load_json(paths.train_summary)
    return {
        "train_seconds": summary["train_seconds"],
        "train_samples_per_second": summary["train_samples_per_second"],
        "epochs_run": summary["epochs_run"],
        "split_sizes": split_sizes(pipeline),
        "augmented_train_rows": sum(1 for _ in open(paths.augmented_train)),
        "quarantined_rows": sum(1 for _ in open(paths.quarantine)),
        "pipeline_seconds": round(time.time() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "history": load_json(paths.history),
        "model": load_params(Path("params.yaml")).pipeline(pipeline).model.name,  # the default where the section has none
        "train_params": params[pipeline]["train"],
        "augment_params": params[pipeline]["augment"],
        "overrides": overrides,
        "cpu_threads": len(os.sched_getaffinity(0)),
    }


def cpu_facts() -> dict:
    """The CPU a speed was measured on: its model name, the SIMD extensions it offers (int8 and bf16 speed
    hang on avx512_vnni / avx_vnni / avx512_bf16 / amx), the threads this process may use."""
    from pipeline.models import cpu_flags

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {"cpu_model": model, "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("sse4", "avx", "fma", "amx"))),
            "cpu_threads": len(os.sched_getaffinity(0))}


def write_result(name: str, overrides: list[str], result: dict) -> None:
    """Write benchmarks/results/NAME[-overrides].json and print the figures (without the history)."""
    output = result_file(name, overrides)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    print(f"wrote {output}")
