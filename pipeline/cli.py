"""The `finetune` command: `finetune stage NAME --pipeline PIPELINE` (what dvc.yaml calls), `finetune predict`,
`finetune select` (active learning), `finetune search` (Optuna), `finetune serve`, `finetune loadtest`,
`finetune deploy`, `finetune restore`, `finetune entities` and `finetune report`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pipeline.errors import DataError, ModelError, OutputError, ServiceError, UsageError, UserError
from pipeline.params import pipeline_option
from pipeline.paths import PipelinePaths
from pipeline.stages import SOURCES, STAGES, require_inputs, run_stage

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pipeline.params import Params


def load_model(pipeline: str, model_uri: str | None, params_file: Path) -> tuple:
    """(task, model, tokenizer): a local folder, a registered version, or the task's champion by default."""
    from pipeline import tracking
    from pipeline.models import use_all_cores
    from pipeline.registry import champion_uri, load_registered
    from pipeline.tasks import get_task, load_params

    params = load_params(params_file)
    config = params.pipeline(pipeline)
    task = get_task(pipeline, config)
    use_all_cores()
    uri = model_uri or champion_uri(config.registry.name)
    if Path(uri).is_dir():
        return (task, *task.load_model(uri))
    if not uri.startswith("models:/"):
        raise ModelError(f"--model {uri}: no such model folder (pass a model folder, models:/NAME/VERSION or models:/NAME@ALIAS)")
    tracking.configure(params.tracking.experiment)
    return (task, *load_registered(task, uri))


def predict(texts: list[str], pipeline: str, model_uri: str | None, params_file: Path) -> None:
    """Print label and score (or the task's own output) per text, from the champion by default."""
    task, model, tokenizer = load_model(pipeline, model_uri, params_file)
    examples = [{"text": text} for text in texts]
    for text, prediction in zip(texts, task.predict(model, tokenizer, examples)):
        print(task.format_prediction(text, prediction))


def select(args: argparse.Namespace) -> None:
    """Rank an unlabelled pool with the champion and write the top k to the labelling queue."""
    import mlflow

    from pipeline import tracking
    from pipeline.tasks import get_task, load_params
    from pipeline.techniques import active_learning

    config = load_params(args.params).pipeline(args.pipeline)
    settings = config.active_learning
    pool = args.pool or settings.pool
    pool_task = get_task(args.pipeline, config)
    read = active_learning.read_pool(pool, pool_task.pool_column())  # before the slow model load
    texts = active_learning.not_yet_asked(read, pool_task)
    if not texts:
        raise DataError(f"{pool}: every one of its {len(read)} texts is labelled already or waiting in {active_learning.QUEUE}/: "
                        "add new texts to the pool")
    task, model, tokenizer = load_model(args.pipeline, args.model, args.params)
    choice = {
        "strategy": args.strategy or settings.strategy, "k": args.k or settings.k,
        "diversity": settings.diversity if args.diversity is None else args.diversity,
    }
    rows = active_learning.rank(task, model, tokenizer, texts, **choice, seed=settings.seed)
    path = active_learning.write_queue(rows, task.pipeline)
    experiment_id = tracking.configure(load_params(args.params).tracking.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"select-{task.pipeline}", tags={"task": task.pipeline, "active_learning": "true"}):
        mlflow.log_params({**choice, "model": args.model or "champion", "pool_texts": len(texts), "pool_texts_asked_before": len(read) - len(texts)})
        mlflow.log_artifact(str(path))
    for row in rows[:10]:
        print(f"{row['rank']:>4}  {row['uncertainty']:.3f}  {row['predicted_label']:<10} {row['text'][:90]}")
    print(f"select[{task.pipeline}]: {len(rows)} of {len(texts)} pool texts written to {path} (add a label column, then drop the file "
          f"in data.incoming); {len(read) - len(texts)} more were labelled already or queued")


def search(pipeline: str, trials: int | None, apply: bool, params_file: Path) -> None:
    """Optuna over the train settings on the current splits; --apply writes the best into params.yaml."""
    from pipeline import search as study
    from pipeline.models import use_all_cores
    from pipeline.tasks import get_task, load_params

    params = load_params(params_file)
    config = params.pipeline(pipeline)
    paths = PipelinePaths(pipeline)
    require_inputs("train", paths)
    use_all_cores()
    report = study.run(get_task(pipeline, config), config, paths, params.tracking.experiment, trials)
    if apply:
        study.apply(report["best_params"], params_file)
        print(f"search[{pipeline}]: wrote the best settings into {params_file}; `dvc repro` trains with them")


def serve(host: str | None, port: int | None, model_uri: str | None, params_file: Path) -> None:
    """Serve every pipeline's champion over HTTP until interrupted (see pipeline/serving/serve.py); with
    --model, that one model as serving.pipeline."""
    import dataclasses

    from pipeline import tracking
    from pipeline.models import use_all_cores
    from pipeline.serving import serve as serving
    from pipeline.tasks import load_params

    params = load_params(params_file)
    settings = dataclasses.replace(
        params.serving, host=host or params.serving.host, port=params.serving.port if port is None else port
    )
    with serving.bind(settings.host, settings.port) as sock:  # before the slow load: a port in use fails at once
        use_all_cores()
        tracking.configure(params.tracking.experiment)
        services = serving.load_services(params, settings, model_uri)
        for name, service in services.items():
            routes = f"/{name}/predict" + (" and /predict" if name == settings.pipeline else "")
            print(f"serve: POST {routes}: {service.summary()}", flush=True)
        print(f"serve: on http://{serving.address(settings.host, settings.port)}", flush=True)
        serving.run(services, settings.pipeline, sock)


def loadtest(args: argparse.Namespace) -> None:
    """Load a running server with concurrent clients; print the report as JSON, exit 1 on any 5xx."""
    import json

    from pipeline.serving.loadtest import load_test
    from pipeline.tasks import load_params

    texts = read_texts(args)
    serving = load_params(args.params).serving
    url = args.url or f"http://{serving.host}:{serving.port}"
    report = load_test(url, texts, args.clients, args.seconds)
    print(json.dumps(report, indent=2))
    if report["server_errors"] or report["failed_connections"]:
        raise ServiceError(f"{report['server_errors']} server errors and {report['failed_connections']} failed connections at {url}")


def deploy(params_file: Path, pool: str | None) -> None:
    """Serve the Prefect deployments (per pipeline a retrain: cron + new-batch and drift triggers; a monitor: cron)
    until interrupted, or register them in a work pool and watch the drop folders."""
    from flows.deploy import deploy as deploy_flows  # late: prefect is heavy and the stages never need it
    from pipeline.locks import check_prefect_api
    from pipeline.tasks import load_params

    params = load_params(params_file)
    check_prefect_api()  # a server that does not answer: one line, not serve()'s traceback
    deploy_flows(params, pool)


def restore(pipeline: str, model_uri: str | None, params_file: Path) -> None:
    """Restore the build (data, splits, model, reports) of a registered version from the DVC remote, here."""
    from flows.storage import restore as restore_build  # late: flows import prefect
    from pipeline import tracking
    from pipeline.registry import champion_uri
    from pipeline.tasks import load_params

    config = load_params(params_file).pipeline(pipeline)
    tracking.point_at_store()
    tracking.check_reachable()
    print(restore_build(pipeline, model_uri or champion_uri(config.registry.name)))


def entity_store(args: argparse.Namespace) -> tuple[Params, str, Engine]:
    """(params, the pipeline --pipeline names or the first monitoring.entities reads, the prediction store)."""
    from pipeline.monitoring.store import open_store
    from pipeline.tasks import load_params

    params = load_params(args.params)
    settings = params.monitoring.entities
    if settings is None:
        raise UsageError(f"{params.file}: monitoring.entities is null: set its tagger (e.g. `entities: {{tagger: ner}}`) and run the monitor")
    pipeline = args.pipeline or settings.pipelines[0]
    if pipeline not in settings.pipelines:
        raise UsageError(f"--pipeline {pipeline}: monitoring.entities reads {', '.join(settings.pipelines)} only (its 'pipelines' key)")
    return params, pipeline, open_store(params.monitoring.db, params.monitoring.pipelines[0])


def entities(args: argparse.Namespace) -> None:
    """Print the sentiment index per entity and window, from the mentions the monitor stored."""
    from pipeline.monitoring.entities import entity_index, entity_table, read_aliases

    params, pipeline, engine = entity_store(args)
    settings = params.monitoring.entities
    rows = entity_index(engine, pipeline, params.pipeline(pipeline).validate.labels, read_aliases(settings.aliases),
                        args.window or settings.window_days, args.windows, args.end, args.top, args.entity)
    if not rows:
        wanted = f"of '{args.entity}' " if args.entity else ""
        print(f"no mentions {wanted}stored for {pipeline} in those windows (the monitor stores them: python -m flows.monitor --pipeline {pipeline})")
        return
    print(entity_table(rows))


def report(args: argparse.Namespace) -> None:
    """Write the desk page of a monitored sentiment pipeline from the prediction store."""
    from pipeline.monitoring.entities import read_aliases
    from pipeline.monitoring.page import write_desk

    params, pipeline, engine = entity_store(args)
    page = write_desk(engine, params, pipeline, read_aliases(params.monitoring.entities.aliases), args.output)
    if page is None:
        print(f"no text stored for {pipeline} yet (the monitor stores them: python -m flows.monitor --pipeline {pipeline})")
        return
    print(f"wrote {page} (open it in a browser)")


def read_texts(args: argparse.Namespace) -> list[str]:
    """The non-blank texts of --file, the arguments or stdin; a UsageError when there are none."""
    if args.file:
        from pipeline.decoding import decode

        lines = decode(Path(args.file), "utf-8", hint="save the file as UTF-8").splitlines()
    elif args.texts:
        lines = args.texts
    else:
        lines = sys.stdin.read().splitlines()
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise UsageError("no texts given (pass them as arguments, with --file, or on stdin)")
    return texts


def iso_date(text: str) -> date:
    """An argparse type: a date as YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date as YYYY-MM-DD, got {text!r}") from None


def bounded(kind: type, low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite `kind` number within the bounds; anything else is argparse's usage error (exit 2)."""
    allowed = f"in {low:g}..{high:g}" if high is not None else f"{'>' if low_open else '>='} {low:g}"
    wrong = f"must be {'an integer' if kind is int else 'a number'} {allowed}, got %r"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(wrong % text) from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(wrong % text)
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its message")
    commands = parser.add_subparsers(dest="command", required=True)

    stage = commands.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    stage.add_argument("name", choices=(SOURCES, *STAGES))
    pipeline_option(stage, "the pipeline, a section of params.yaml (sources covers every one in `pipelines`)", default="sentiment")

    pred = commands.add_parser("predict", help="label texts with a registered or local model")
    pred.add_argument("texts", nargs="*", help="texts to label (default: read stdin, one a line)")
    pred.add_argument("--file", help="a file with one text a line")
    pipeline_option(pred, "the pipeline, a section of params.yaml", default="sentiment")
    pred.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a local model folder (default: the champion)")

    sel = commands.add_parser("select", help="active learning: queue the pool texts the champion is least sure about")
    pipeline_option(sel, "the pipeline, a section of params.yaml", default="sentiment")
    sel.add_argument("--pool", help="unlabelled texts: .txt (one a line), csv/tsv/jsonl/parquet or a folder (default: active_learning.pool)")
    sel.add_argument("--strategy", choices=("least_confidence", "margin", "entropy", "random"), help="default: active_learning.strategy")
    sel.add_argument("--k", type=bounded(int, 1), help="texts to queue (default: active_learning.k)")
    sel.add_argument("--diversity", type=bounded(float, 0), help="weight of the redundancy penalty (default: active_learning.diversity)")
    sel.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a local model folder (default: the champion)")

    hps = commands.add_parser("search", help="Optuna search over the train settings (space: <pipeline>.search in params.yaml)")
    pipeline_option(hps, "the pipeline, a section of params.yaml", default="sentiment")
    hps.add_argument("--trials", type=bounded(int, 1), help="default: search.trials")
    hps.add_argument("--apply", action="store_true", help="write the best settings into params.yaml")

    srv = commands.add_parser("serve", help="serve every pipeline's champion over HTTP (settings: serving in params.yaml)")
    srv.add_argument("--host", help="interface to listen on (default: serving.host, 127.0.0.1)")
    srv.add_argument("--port", type=bounded(int, 0, 65535), help="port (default: serving.port, 8000)")
    srv.add_argument("--model", help="serve only this model, as serving.pipeline: models:/NAME@ALIAS (followed as it "
                     "moves) or models:/NAME/VERSION (default: every pipeline's champion)")

    load = commands.add_parser("loadtest", help="concurrent clients against a running `finetune serve`: status counts, p50/p99")
    load.add_argument("texts", nargs="*", help="texts to send (default: read stdin, one a line)")
    load.add_argument("--file", help="a file with one text a line")
    load.add_argument("--url", help="the server (default: http://serving.host:serving.port)")
    load.add_argument("--clients", type=bounded(int, 1), default=50, help="concurrent clients (default: 50)")
    load.add_argument("--seconds", type=bounded(float, 0, low_open=True), default=30.0, help="how long to keep sending (default: 30)")

    dep = commands.add_parser("deploy", help="serve the Prefect retrain and monitor deployments (settings: orchestration, monitoring)")
    dep.add_argument("--pool", help="register them in this Prefect work pool instead, for `prefect worker start --pool NAME` "
                     "on any machine with a clone (FINETUNE_CHECKOUT=/path/to/clone), and watch the drop folders")

    ent = commands.add_parser("entities", help="sentiment per entity and window, from the monitor's prediction store (monitoring.entities)")
    pipeline_option(ent, "the monitored pipeline (default: the first of monitoring.entities.pipelines)")
    ent.add_argument("--entity", help="only this entity (any spelling of it)")
    ent.add_argument("--window", type=bounded(int, 1), help="days per window (default: monitoring.entities.window_days)")
    ent.add_argument("--windows", type=bounded(int, 1), default=1, help="how many windows, the newest last (default: 1)")
    ent.add_argument("--end", type=iso_date, help="the last day of the newest window, YYYY-MM-DD (default: the newest text's)")
    ent.add_argument("--top", type=bounded(int, 1), default=20, help="the most mentioned entities shown (default: 20)")

    rep = commands.add_parser("report", help="write the desk page of a monitored sentiment pipeline: alerts, market index, "
                              "entities and their trend, the models behind them (monitoring.entities)")
    pipeline_option(rep, "the monitored pipeline (default: the first of monitoring.entities.pipelines)")
    rep.add_argument("--output", type=Path, help="the HTML file to write (default: reports/monitor/<pipeline>/desk.html)")

    rst = commands.add_parser("restore", help="in a checkout at a registered version's commit: its dvc.lock, then `dvc pull` its "
                              "data, splits, model and reports from the DVC remote")
    pipeline_option(rst, "the pipeline, a section of params.yaml", default="sentiment")
    rst.add_argument("--model", help="models:/NAME/VERSION or models:/NAME@ALIAS (default: the champion)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user's mistake ends in one `error:` line and its exit code (pipeline/errors.py)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        run_command(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.filename is None or args.debug:
            raise  # not about a path (a bug, a lost connection): keep the traceback
        # A file or folder the command cannot read or write (a full disk, a file where a folder should be).
        print(f"error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return OutputError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def run_command(args: argparse.Namespace) -> None:
    if args.command == "stage":
        run_stage(args.name, args.pipeline, args.params)
    elif args.command == "serve":
        serve(args.host, args.port, args.model, args.params)
    elif args.command == "deploy":
        deploy(args.params, args.pool)
    elif args.command == "select":
        select(args)
    elif args.command == "search":
        search(args.pipeline, args.trials, args.apply, args.params)
    elif args.command == "loadtest":
        loadtest(args)
    elif args.command == "entities":
        entities(args)
    elif args.command == "report":
        report(args)
    elif args.command == "restore":
        restore(args.pipeline, args.model, args.params)
    else:
        predict(read_texts(args), args.pipeline, args.model, args.params)


if __name__ == "__main__":
    sys.exit(main())
