"""Retrain flow: `dvc repro -s sources`, then `dvc repro -s STAGE@PIPELINE` for each stage of one
pipeline (or, with no pipeline named, of each pipeline of `pipelines` in turn), one Prefect task per stage.

DVC still decides what is up to date (an unchanged stage is skipped in a second); Prefect adds
retries, logs, a run history and a markdown artifact per task. Each pipeline runs in a workspace of
its own (flows/workspaces.py), so different pipelines retrain side by side. With a default DVC remote,
a run pulls the pipeline's outputs before and pushes them after, and the registered version records
the dvc.lock it was built from (flows/storage.py). One pipeline is never
retrained twice at once: each run holds the slot of the pipeline's Prefect global concurrency limit
`finetune-retrain-<pipeline>` (pipeline/locks.py), and a file lock per pipeline for runs against
another Prefect server.

    python -m flows.retrain --pipeline intents   # retrains one pipeline, now
    python -m flows.retrain                      # every pipeline of `pipelines`, one after the other
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows import storage
from flows.events import BATCH_REJECTED, emit
from flows.pool import require_shared_registry
from flows.workspaces import WORKSPACES, command_env, deployed_commit, pipeline_workspace, uncommitted
from pipeline import tracking
from pipeline.errors import ConfigError, UserError
from pipeline.locks import check_prefect_api, file_lock, limit_name, prefect_limit
from pipeline.params import Params, did_you_mean
from pipeline.paths import PipelinePaths
from pipeline.records import load_json
from pipeline.stages import SOURCES, STAGES
from pipeline.tasks import load_params


@task(retries=2, retry_delay_seconds=10, task_run_name="{stage}")
def repro_stage(stage: str, workspace: Path) -> str:
    """Run one DVC stage in the workspace, e.g. train@sentiment (DVC skips it when up to date); its output goes
    to the Prefect logs."""
    logger = get_run_logger()
    done = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=workspace, capture_output=True, text=True,
                          env=command_env())
    output = (done.stdout + done.stderr).strip()
    logger.info("%s:\n%s", stage, output)
    if done.returncode != 0:
        raise RuntimeError(f"dvc repro -s {stage} failed (exit {done.returncode}): {stage_error(output)}")
    return output


def stage_error(output: str) -> str:
    """The line that says why a stage failed: `finetune`'s own `error:` line, else DVC's last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def mlflow_run_link(run_id: str, experiment: str) -> str:
    """A link to the run in the MLflow UI (`make ui` for the embedded store), and its tracking URI."""
    import mlflow

    tracking.configure(experiment)
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    uri = tracking.tracking_uri()
    ui = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"  # `make ui` serves the local store there
    return f"[{run_id}]({ui}/#/experiments/{experiment_id}/runs/{run_id}) (tracking URI `{uri}`)"


def rejected_batches_markdown(batches: list[dict], record: Path) -> str:
    """The drop-folder batches collect set aside, and how to get them read."""
    if not batches:
        return ""
    rows = "\n".join(f"| `{b['file']}` | {b['bytes']} | `{b['sha256'][:12]}` | {b['rejected_at']} | {b['reason']} |" for b in batches)
    return (
        f"## Batches set aside ({len(batches)})\n\nNot read: fix each file and drop it again (a copy with new content is "
        f"read on the next run). All rejections: `{record}`.\n\n"
        f"| file | bytes | sha256 | set aside | reason |\n|---|---|---|---|---|\n{rows}\n\n"
    )


def report_rejected_batches(pipeline: str, since: datetime, workspace: Path) -> None:
    """Emit BATCH_REJECTED for each batch this run's collect set aside (earlier rejections were reported then)."""
    for batch in load_json(workspace / PipelinePaths(pipeline).provenance)["rejected_batches"]:
        if datetime.fromisoformat(batch["rejected_at"]) >= since.replace(microsecond=0):
            emit(BATCH_REJECTED, pipeline, {k: batch[k] for k in ("file", "bytes", "sha256", "reason")})
            get_run_logger().warning("%s: batch %s set aside: %s", pipeline, batch["file"], batch["reason"])


def paired_test_markdown(decision: dict) -> str:
    """The gain and the paired test behind the decision, as a table (nothing for a first model)."""
    test = decision["test"]
    if test is None:
        return ""
    interval = p_value = resamples = "-"
    if test["method"] != "none":
        low, high = test["interval"]
        interval = f"{test['confidence']:.0%}: [{low:+.4f}, {high:+.4f}]"
        p_value, resamples = f"{test['p_value']:.3f}", f"{test['resamples']} of {test['examples']} examples"
    return ("| test | gain | interval | p-value | resamples | min_delta |\n|---|---|---|---|---|---|\n"
            f"| {test['method']} | {decision['delta']:+.4f} | {interval} | {p_value} | {resamples} | {decision['min_delta']} |\n\n")


def summary_markdown(pipeline: str, experiment: str, workspace: Path) -> str:
    """Metrics, promotion decision, batches set aside and MLflow run of a task in its workspace, as markdown."""
    paths = PipelinePaths(pipeline)
    metrics, decision = load_json(workspace / paths.metrics), load_json(workspace / paths.promotion)
    run_id = load_json(workspace / paths.model_dir / tracking.RUN_FILE)["run_id"]
    rows = "\n".join(
        f"| {split} | {name} | {value:.4f} |"
        for split in ("val", "test")
        for name, value in metrics[split].items()
        if isinstance(value, (int, float))
    )
    set_aside = rejected_batches_markdown(load_json(workspace / paths.provenance)["rejected_batches"], workspace / paths.rejected_batches)
    champion = decision["champion"] or {"version": "-", "score": None}
    champion_score = "-" if champion["score"] is None else f"{champion['score']:.4f}"
    return (
        f"# Retrain: {pipeline}\n\n"
        f"**{decision['model_name']} v{decision['challenger']['version']} -> @{decision['alias']}**: {decision['reason']}\n\n"
        f"| | challenger | champion |\n|---|---|---|\n"
        f"| version | {decision['challenger']['version']} | {champion['version']} |\n"
        f"| {decision['metric']} | {decision['challenger']['score']:.4f} | {champion_score} |\n\n"
        f"{paired_test_markdown(decision)}"
        f"## Metrics (`{workspace / paths.metrics}`)\n\n| split | metric | value |\n|---|---|---|\n{rows}\n\n{set_aside}"
        f"## MLflow run\n\n{mlflow_run_link(run_id, experiment)}\n"
    )


def pipelines_to_retrain(params: Params, pipeline: str | None) -> list[str]:
    """The pipeline named (one of `pipelines`: dvc.yaml has stages for those only), or every pipeline of `pipelines`."""
    if pipeline is None:
        return list(params.pipelines)
    if pipeline not in params.pipelines:
        raise ConfigError(f"{params.file}: cannot retrain '{pipeline}'{did_you_mean(pipeline, params.pipelines)}: dvc.yaml has stages "
                          f"for the pipelines of 'pipelines' only ({', '.join(params.pipelines)}); add it there to retrain it")
    return [pipeline]


@flow(name="retrain", log_prints=True)
def retrain(pipeline: str | None = None) -> dict:
    """Bring one pipeline (None: every pipeline of `pipelines`, in turn) up to date with DVC in its own workspace,
    one run per pipeline at a time; returns the promotion decision of each pipeline retrained."""
    params = load_params()  # params.yaml, the file dvc.yaml reads
    pipelines = pipelines_to_retrain(params, pipeline)
    require_shared_registry()
    tracking.point_at_store()
    tracking.check_reachable()  # a store that does not answer: stop before training, not at register
    started = datetime.now(timezone.utc)
    run_stage = repro_stage.with_options(retries=params.orchestration.retries)
    decisions = {}
    for name in pipelines:
        with prefect_limit(limit_name("retrain", name)), file_lock(WORKSPACES / f"{name}.lock"):
            workspace = pipeline_workspace(name, params.pipeline(name).data)
            get_run_logger().info("%s: in %s at %s", name, workspace, deployed_commit()[:12])
            for path in uncommitted():
                get_run_logger().warning("%s: not committed, so not what this run uses: commit it to deploy it", path)
            remote = storage.default_remote(workspace)
            storage.pull(workspace, name, params.pipeline(name).registry.name, remote)
            run_stage(SOURCES, workspace)
            run_stage(f"{STAGES[0]}@{name}", workspace)  # collect: report the batches it set aside before anything can fail
            report_rejected_batches(name, started, workspace)
            for stage in STAGES[1:]:
                if stage == "register":  # nothing is judged whose data and model are not in the remote yet
                    storage.push(workspace, name, remote)
                run_stage(f"{stage}@{name}", workspace)
            storage.push(workspace, name, remote)
            storage.record_build(workspace, load_json(workspace / PipelinePaths(name).promotion), remote)
            # Read while the workspace is still this run's: the next run would rewrite these files.
            create_markdown_artifact(
                key=f"retrain-{name}",
                markdown=summary_markdown(name, params.tracking.experiment, workspace),
                description=f"metrics, promotion decision and MLflow run of {name}",
            )
            decisions[name] = load_json(workspace / PipelinePaths(name).promotion)
    return decisions


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Retrain a pipeline (or every pipeline of `pipelines`) now.")
    parser.add_argument("--pipeline", help="the pipeline to retrain (default: every pipeline of `pipelines`, in turn)")
    arguments = parser.parse_args()
    try:  # a misspelt name, a Prefect server or tracking store that does not answer: one line, before the flow starts
        pipelines_to_retrain(load_params(), arguments.pipeline)
        check_prefect_api()
        tracking.point_at_store()
        tracking.check_reachable()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    state = retrain(arguments.pipeline, return_state=True)
    if not state.is_completed():
        sys.exit(f"error: the retrain ended {state.name}: {state.message} (its log and stage output are above and in the Prefect UI)")
