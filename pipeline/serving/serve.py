"""`finetune serve`: the model of every pipeline (its champion by default) behind HTTP, in one process.

- POST /{pipeline}/predict answers with that pipeline's model, in its task type's shape: a label and
  score per text (and the top_k labels on request), entity spans with character offsets, or a
  translation. POST /predict is serving.pipeline's, as before pipelines were served together.
- Each pipeline has its own `Service`: requests that arrive together share one model call (they
  wait in an asyncio queue that a single worker drains into batches of up to `max_batch_size` texts),
  and a watcher checks its registry alias every `reload_seconds` (POST /reload checks at once). A new
  version is loaded in the background and swapped in by replacing one reference: batches already
  running finish on the old model, no request waits for the load or is dropped, and no other
  pipeline notices. A pipeline with no model yet answers 503 until its watcher finds its first.
- The monitored pipelines' answers (serving.log_share of them) go to the prediction store for the
  monitor, written by one thread from a bounded queue (pipeline/monitoring/served.py): a request
  never waits for the store; answers that do not fit are dropped from the log and counted.
- For operators: GET /health is liveness, GET /ready readiness (503 until every pipeline has a
  model), GET /metrics Prometheus' (pipeline/serving/metrics.py); every predict answer names its
  model version in the header X-Model-Version.
- The port is bound before the models load, so a port in use fails at once; it listens once they
  are loaded. Idle connections stay open `keep_alive_seconds`: uvicorn's default, 5 s, is exactly
  how long httpx keeps one for reuse, so a client could reuse a connection just as the server
  closed it, and that request failed unanswered.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run
time, and each pipeline's request model is built inside `create_app` from its labels and the limits.
"""

import asyncio
import contextlib
import errno
import functools
import logging
import re
import socket
import time
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Annotated, Any, AsyncIterator, Callable, Iterable, Iterator, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline import tracking
from pipeline.errors import ModelError, ServiceError
from pipeline.monitoring.served import PredictionLog
from pipeline.params import Params, ServingConfig
from pipeline.registry import champion_uri, load_registered, parse_model_uri, registered_version
from pipeline.serving.metrics import Metrics
from pipeline.tasks import Task, get_task

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one, so messages show beside its own
VERSION_HEADER = "X-Model-Version"  # on every predict answer: the version that made its predictions


# the served model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """A loaded model version and where it came from; swapped whole, never changed in place."""

    name: str
    version: str
    alias: str | None
    run_id: str
    runtime: str  # torch, or onnx-int8 / onnx-fp32: the version's ONNX Runtime export
    model: Any
    tokenizer: Any


def load_version(task: Task, uri: str, found: Any, runtime: str) -> Served:
    """Load the version found, by number: the alias may move again while this loads. With runtime
    onnx, its ONNX Runtime export when it has one (registry.onnx), else PyTorch, with a warning."""
    from pipeline.techniques import export
    precision = found.tags.get(export.VERSION_TAG)
    if runtime == "onnx" and precision in ("int8", "fp32"):
        model, tokenizer = export.load_logged(found.run_id)
        runtime = f"onnx-{precision}"
    else:
        if runtime == "onnx":
            log.warning("%s v%s has no ONNX export (tag onnx: %s; see registry.onnx): serving it with PyTorch",
                        found.name, found.version, precision)
        model, tokenizer = load_registered(task, f"models:/{found.name}/{found.version}")
        runtime = "torch"
    return Served(found.name, str(found.version), parse_model_uri(uri)[1], found.run_id, runtime, model, tokenizer)


def load_served(task: Task, uri: str, runtime: str) -> Served:
    """Load the version `uri` points at now."""
    return load_version(task, uri, registered_version(uri), runtime)


# request and response bodies --------------------------------------------------------------------
class PredictResponse(BaseModel):
    """Predictions in the task type's shape (its `prediction_schema`)."""

    model_version: str
    predictions: list[dict[str, Any]]


@functools.cache
def response_model(task_class: type[Task]) -> type[PredictResponse]:
    """The response body of a task type, named after it (TextClassificationTask: TextClassificationResponse);
    one per type, so pipelines of one type share its schema in /docs."""
    name = task_class.__name__.removesuffix("Task") + "Response"
    return create_model(name, __base__=PredictResponse, predictions=(list[task_class.prediction_schema], ...))


# Python's whitespace (str.isspace) as a character class, spelled out so that every regex engine reading the
# spec (ECMA's, Python's, Rust's) agrees with the server: a text must hold one character outside it.
NON_SPACE = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def has_non_space(text: str) -> str:
    """Refuse a text of whitespace only, with a message a person can read (a failed pattern would print the class)."""
    if text.isspace():
        raise PydanticCustomError("blank_text", "String should hold a character other than whitespace")
    return text


def request_model(task: Task, settings: ServingConfig) -> type[BaseModel]:
    """A pipeline's predict body, with this deployment's limits and its task type's own fields (a classifier's
    top_k), so they are enforced and shown in /docs. A text is kept as sent: entity offsets index it."""
    text = Annotated[str, StringConstraints(min_length=1, max_length=settings.max_text_chars), AfterValidator(has_non_space),
                     Field(json_schema_extra={"pattern": NON_SPACE})]
    texts = Field(min_length=1, max_length=settings.max_texts_per_request, examples=[[task.example_text]],
                  description=f"1 to {settings.max_texts_per_request} texts, each of 1 to {settings.max_text_chars} "
                              "characters, one of them not whitespace")
    fields: dict[str, Any] = {"texts": (list[text], texts), **task.request_fields()}
    name = "".join(part.capitalize() for part in re.split("[-_]", task.pipeline))  # the schema's name in /docs
    return create_model(f"{name}Request", __config__=ConfigDict(extra="forbid"), **fields)


class Problem(BaseModel):
    """The body of every refusal but a 422's: one line that says what is wrong and what to do."""

    detail: str


def problems(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses with a Problem body, by status (s400=...): what each status means on a route."""
    return {int(status[1:]): {"model": Problem, "description": text} for status, text in descriptions.items()}


BODY_LIMIT = "(serving.max_texts_per_request texts of serving.max_text_chars characters)"
ANY_ROUTE = problems(s400="the Content-Length header is not a number",
                     s413=f"the body is larger than the largest valid request {BODY_LIMIT}")
# A route answering text: FastAPI files a `model` under the route's media type, so ANY_ROUTE's refusals are
# spelled out as the JSON they are (the Problem schema is in the spec through the other routes' `model`).
TEXT_ROUTE = {status: {"description": response["description"],
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
              for status, response in ANY_ROUTE.items()}
PREDICT = problems(s400="the Content-Length header is not a number, or the body is not UTF-8 text",
                   s411="the request has no Content-Length header (a chunked body)",
                   s415="the body is not declared JSON (content-type: application/json)",
                   s503="the pipeline has no model yet: it is served once one is registered")
RELOAD = problems(s503="checking the registry failed: the version served is kept")
UNPARSED = "There was an error parsing the body"  # FastAPI's 400 for a JSON body that is not UTF-8 text


class PipelineHealth(BaseModel):
    status: Literal["ok", "no_model"]  # no_model: its route answers 503 until its first model is registered
    model_version: str | None


class Health(BaseModel):
    status: str
    model_version: str | None = Field(description="serving.pipeline's, the model behind POST /predict")
    pipelines: dict[str, PipelineHealth]


class Readiness(BaseModel):
    ready: bool = Field(description="every pipeline has a model to answer with")
    pipelines: dict[str, PipelineHealth]


class Version(BaseModel):
    name: str
    version: str | None  # None: the pipeline has no model yet
    alias: str | None
    run_id: str | None
    runtime: str | None


class Versions(Version):
    """serving.pipeline's version at the top level (the model behind POST /predict), and every pipeline's."""

    pipelines: dict[str, Version]


class Reload(BaseModel):
    reloaded: bool
    version: str | None


class Reloads(Reload):
    """serving.pipeline's reload at the top level, and every pipeline's."""

    pipelines: dict[str, Reload]


# batching and hot-swap --------------------------------------------------------------------------
@dataclass
class Pending:
    """One request's texts, and the future its predictions are delivered to."""

    texts: list[str]
    options: dict[str, Any]  # the request's fields of the task type's `request_fields` (e.g. top_k), set on each text
    result: asyncio.Future


class Service:
    """One pipeline's model, the queue that batches requests for it, and the reloads that replace it.
    `served` is None while its URI points at nothing: the watcher loads the first version that appears."""

    def __init__(self, task: Task, uri: str, settings: ServingConfig, served: Served | None, log: PredictionLog | None = None):
        self.task, self.uri, self.settings, self.served, self.log = task, uri, settings, served, log
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.held: Pending | None = None  # a request that did not fit the last batch: first in the next
        self.reload_lock = asyncio.Lock()
        self.observe_batch: Callable[[int], None] = lambda texts: None  # the app's batch-size histogram, once it has one

    @property
    def version(self) -> str | None:
        """The version being served; None while there is none."""
        return self.served.version if self.served else None

    @property
    def still(self) -> str:
        """What keeps answering after a failed check."""
        return f"still serving v{self.version}" if self.served else "still without a model"

    def summary(self) -> str:
        """What it serves, in a few words (the log line at start)."""
        if self.served is None:
            return (f"no model at {self.uri} yet: answers 503 until one is registered "
                    f"(checked every {self.settings.reload_seconds:g} s, or POST /reload)")
        served = self.served
        return f"{served.name} v{served.version} ({self.uri}) with {served.runtime}"

    async def predict(self, texts: list[str], options: dict[str, Any] | None = None) -> tuple[str, list[dict]]:
        """(model version, predictions) for texts, scored together with whatever else is queued; `options`
        (a request's fields beside texts, e.g. a classifier's top_k) go with each of its texts."""
        pending = Pending(texts, options or {}, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.result

    async def next_batch(self) -> list[Pending]:
        """Wait for a request, then take more for up to batch_wait_ms or max_batch_size texts.

        A request is never split, so all its predictions come from one model version; one larger
        than max_batch_size is scored alone.
        """
        first = self.held or await self.queue.get()
        self.held = None
        batch, size = [first], len(first.texts)
        deadline = asyncio.get_running_loop().time() + self.settings.batch_wait_ms / 1000
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):  # a cancelled get() leaves the item queued
                while size < self.settings.max_batch_size:
                    pending = await self.queue.get()
                    if size + len(pending.texts) > self.settings.max_batch_size:
                        self.held = pending
                        break
                    batch.append(pending)
                    size += len(pending.texts)
        return batch

    async def run_batches(self) -> None:
        """The batch worker: one model call per batch, in a thread so the server keeps accepting."""
        while True:
            batch = await self.next_batch()
            served = self.served  # this batch finishes on this model even if a swap happens meanwhile
            examples = [{"text": text, **pending.options} for pending in batch for text in pending.texts]
            self.observe_batch(len(examples))
            try:
                predictions = await asyncio.to_thread(self.task.predict, served.model, served.tokenizer, examples)
            except Exception as exc:  # fail these requests, keep serving the next ones
                log.exception("prediction failed")
                for pending in batch:
                    if not pending.result.done():
                        pending.result.set_exception(exc)
                continue
            start = 0
            for pending in batch:
                if not pending.result.done():  # done already: the client went away
                    answers = predictions[start : start + len(pending.texts)]
                    pending.result.set_result((served.version, answers))
                    if self.log and self.task.counts:  # the monitor reads what its predictions count (none: not monitored)
                        self.log.offer(self.task.pipeline, served.version, pending.texts, [self.task.observation(a) for a in answers])
                start += len(pending.texts)

    async def reload(self) -> bool:
        """Serve the version the URI points at now, loading it first; True when it changed. While there
        has never been one, a URI that points at nothing is no failure: the pipeline keeps waiting."""
        async with self.reload_lock:  # the watcher and POST /reload never load the same version twice
            try:
                found = await asyncio.to_thread(registered_version, self.uri)
            except ModelError:
                if self.served is None:
                    return False
                raise
            if str(found.version) == self.version:
                return False
            served = await asyncio.to_thread(load_version, self.task, self.uri, found, self.settings.runtime)
            previous, self.served = self.version, served  # one assignment: the swap
            log.info("%s: now serving %s v%s with %s (%s)", self.task.pipeline, served.name, served.version, served.runtime,
                     f"was v{previous}" if previous else "its first model")
            return True

    async def watch(self) -> None:
        """Check the registry every reload_seconds; a failed check keeps the current model."""
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            try:
                await self.reload()
            except Exception as exc:  # a registry hiccup must not take serving down
                log.warning("checking %s failed, %s: %s", self.uri, self.still, exc)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the batch worker and the watcher while the app runs."""
        workers = [asyncio.create_task(self.run_batches()), asyncio.create_task(self.watch())]
        try:
            yield
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


def prediction_log(params: Params, settings: ServingConfig) -> PredictionLog | None:
    """The log that writes the monitored pipelines' answers to the prediction store (None with log_share 0)."""
    monitored = params.monitoring.pipelines
    if settings.log_share == 0 or not monitored:
        return None
    return PredictionLog(params.monitoring.db, monitored[0], monitored, settings.log_share, settings.log_queue)


def load_services(params: Params, settings: ServingConfig, model_uri: str | None = None) -> dict[str, Service]:
    """A Service per pipeline, by name: every one in `pipelines` (and settings.pipeline) at its champion, or with
    `model_uri` settings.pipeline's alone, at that URI; all share one prediction log. A pipeline whose URI
    points at nothing yet is served once it does (see Service); a ModelError when that leaves nothing to serve."""
    names = [settings.pipeline] if model_uri else list(dict.fromkeys([*params.pipelines, settings.pipeline]))
    log = prediction_log(params, settings)
    services, missing = {}, []
    for name in names:
        config = params.pipeline(name)
        task = get_task(name, config)
        uri = model_uri or champion_uri(config.registry.name)
        try:
            served = load_served(task, uri, settings.runtime)
        except ModelError as exc:
            served = None
            missing.append(exc)
        services[name] = Service(task, uri, settings, served, log)
    if len(missing) == len(names) == 1:
        raise missing[0]
    if len(missing) == len(names):
        raise ModelError(f"nothing to serve: no pipeline has a model yet ({', '.join(s.uri for s in services.values())} "
                         f"in {tracking.tracking_uri()}); register one with `dvc repro`")
    return services


@contextlib.asynccontextmanager
async def running(services: Iterable[Service]) -> AsyncIterator[None]:
    """Run every service's batch worker and watcher, and their prediction log's writer, while the app runs."""
    services = list(services)
    async with contextlib.AsyncExitStack() as stack:
        for log in {service.log for service in services if service.log}:  # one, shared
            log.start()
            stack.push_async_callback(asyncio.to_thread, log.stop)  # after the workers stop: what they offered is written
        for service in services:
            await stack.enter_async_context(service.running())
        yield


# the app ----------------------------------------------------------------------------------------
def max_body_bytes(settings: ServingConfig) -> int:
    """The largest body a valid request can have: every text at its longest, each char JSON-escaped (6 bytes)."""
    return settings.max_texts_per_request * (6 * settings.max_text_chars + 4) + 1024


async def json_only(request: Request) -> None:
    """415 unless the body is declared JSON: `curl -d` sends a form, which would fail less clearly."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the body as JSON, with the header content-type: application/json")


def add_predict_route(app: FastAPI, path: str, service: Service, body: type[BaseModel]) -> None:
    """POST `path`: the service's predictions for a request of model `body`, in its task type's response."""
    response = response_model(type(service.task))

    @app.post(path, dependencies=[Depends(json_only)], response_model_exclude_none=True, responses=PREDICT,
              summary=f"Predict with {service.task.pipeline} ({service.uri})")
    async def predict(request: body, answer: Response) -> response:
        """Predictions for each text, in the order of `texts`, and the version that made them in the header
        X-Model-Version; 503 while the pipeline has no model yet."""
        if service.served is None:
            raise HTTPException(503, f"{service.task.pipeline} has no model yet: nothing at {service.uri}; it is served "
                                     "once one is registered")
        version, predictions = await service.predict(request.texts, request.model_dump(exclude={"texts"}, exclude_none=True))
        answer.headers[VERSION_HEADER] = version
        return response(model_version=version, predictions=predictions)


def add_pipeline_routes(app: FastAPI, name: str, service: Service, body: type[BaseModel]) -> None:
    """POST /{name}/predict, POST /{name}/reload and GET /{name}/version: one pipeline's own routes."""
    add_predict_route(app, f"/{name}/predict", service, body)

    @app.post(f"/{name}/reload", responses=RELOAD, summary=f"Check {service.uri} now")
    async def reload() -> Reload:
        """Check this pipeline's registry alias now and swap in a new version if it moved."""
        return await reload_checked(service)

    @app.get(f"/{name}/version", summary=f"The version of {service.uri} answering")
    async def version() -> Version:
        """The model version this pipeline answers with and where it came from."""
        return version_of(service)


async def reload_checked(service: Service) -> Reload:
    """Check the service's URI now and swap in a new version if it moved; 503 when the check fails."""
    try:
        reloaded = await service.reload()
    except Exception as exc:
        raise HTTPException(503, f"checking {service.uri} failed, {service.still}: {exc}")
    return Reload(reloaded=reloaded, version=service.version)


def pipeline_health(services: dict[str, Service]) -> dict[str, PipelineHealth]:
    """Each pipeline's status (ok, or no_model) and version."""
    return {name: PipelineHealth(status="ok" if s.served else "no_model", model_version=s.version) for name, s in services.items()}


def version_of(service: Service) -> Version:
    """The version a service answers with and where it came from (name and alias only, before its first)."""
    served = service.served
    if served is None:
        name, alias, version = parse_model_uri(service.uri)
        return Version(name=name, version=version, alias=alias, run_id=None, runtime=None)
    return Version(name=served.name, version=served.version, alias=served.alias, run_id=served.run_id, runtime=served.runtime)


def create_app(services: dict[str, Service], default: str) -> FastAPI:
    """The HTTP API of `services` (by pipeline name), POST /predict being `default`'s; their workers and
    watchers run for the app's lifetime."""
    settings = services[default].settings
    metrics = Metrics(services)
    for name, service in services.items():
        service.observe_batch = metrics.batch_texts.labels(pipeline=name).observe
    app = FastAPI(
        title="finetune-pipeline serving",
        summary=f"Predicts with {', '.join(s.uri for s in services.values())}, batching concurrent requests.",
        version=package_version("finetune-pipeline"),
        responses=ANY_ROUTE,
        lifespan=lambda app: running(services.values()),
    )
    body_limit = max_body_bytes(settings)
    predicting = {"/predict": default, **{f"/{name}/predict": name for name in services}}  # the pipeline of each predict route

    @app.exception_handler(StarletteHTTPException)
    async def explain_unparsed_bodies(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's 400 for a body it cannot decode, in one line that says what to send instead."""
        if exc.status_code == 400 and exc.detail == UNPARSED:
            exc = HTTPException(400, "the body is not UTF-8 text: send the JSON encoded in UTF-8")
        return await http_exception_handler(request, exc)

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):
        """413 before a byte of an oversized body is read, 411 for a predict body of unknown length,
        400 for a length that is no number (uvicorn's parser answers that itself; another ASGI server may not)."""
        declared = request.headers.get("content-length")
        if request.method == "POST" and request.url.path in predicting and declared is None:
            return JSONResponse({"detail": "send a Content-Length header"}, status_code=411)
        if declared is not None and not declared.strip().isdigit():
            return JSONResponse({"detail": f"the Content-Length header must be a number of bytes, got {declared!r}"}, status_code=400)
        if declared is not None and int(declared) > body_limit:
            return JSONResponse({"detail": f"the body has {declared} bytes; at most {body_limit} are accepted "
                                           "(serving.max_texts_per_request x serving.max_text_chars)"}, status_code=413)
        return await call_next(request)

    @app.middleware("http")
    async def count_predict_requests(request: Request, call_next):
        """Every predict request's status and latency into the metrics, refused ones (4xx) included."""
        pipeline = predicting.get(request.url.path) if request.method == "POST" else None
        started = time.perf_counter()
        response = await call_next(request)
        if pipeline:
            metrics.answered(pipeline, response.status_code, time.perf_counter() - started)
        return response

    bodies = {name: request_model(service.task, settings) for name, service in services.items()}
    add_predict_route(app, "/predict", services[default], bodies[default])
    for name, service in services.items():
        add_pipeline_routes(app, name, service, bodies[name])

    @app.get("/health")
    async def health() -> Health:
        """Liveness: the process answers. With each pipeline's model version (the app only starts once the
        models that exist are loaded)."""
        return Health(status="ok", model_version=services[default].version, pipelines=pipeline_health(services))

    @app.get("/ready", responses={503: {"model": Readiness, "description": "a pipeline has no model yet"}})
    async def ready() -> Readiness:
        """Readiness: 200 once every pipeline has a model to answer with, 503 until then."""
        readiness = Readiness(ready=all(s.served for s in services.values()), pipelines=pipeline_health(services))
        if not readiness.ready:
            return JSONResponse(readiness.model_dump(), status_code=503)
        return readiness

    @app.get("/metrics", response_class=PlainTextResponse, responses=TEXT_ROUTE)
    async def prometheus_metrics() -> PlainTextResponse:
        """The metrics in Prometheus' text format (see pipeline/serving/metrics.py); gathered off the event loop,
        as the open alerts are read from the prediction store."""
        return PlainTextResponse(await asyncio.to_thread(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> Versions:
        """The model versions being served and where they came from."""
        return Versions(**version_of(services[default]).model_dump(), pipelines={n: version_of(s) for n, s in services.items()})

    @app.post("/reload", responses=RELOAD)
    async def reload() -> Reloads:
        """Check every pipeline's registry alias now and swap in the new versions of those that moved."""
        results = await asyncio.gather(*(reload_checked(service) for service in services.values()))
        reloads = dict(zip(services, results))
        return Reloads(**reloads[default].model_dump(), pipelines=reloads)

    return app


# the server -------------------------------------------------------------------------------------
PORT_FIX = "pass --port or set serving.port in params.yaml"
HOST_FIX = "pass --host or set serving.host in params.yaml (127.0.0.1: this machine only, 0.0.0.0: every interface)"
LISTEN_PROBLEMS = {
    errno.EADDRINUSE: f"the port is in use (another finetune serve?); {PORT_FIX}",
    errno.EACCES: f"permission denied (ports below 1024 need root); {PORT_FIX}",
    errno.EADDRNOTAVAIL: f"the address is not one of this machine's; {HOST_FIX}",
}


def address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_problem(exc: OSError) -> str:
    """Why a socket could not bind or listen, and what to change (a port outside 0-65535 never gets here:
    params.yaml and --port refuse it)."""
    if isinstance(exc, socket.gaierror):
        return f"the host name is not known ({exc.strerror}); {HOST_FIX}"
    return LISTEN_PROBLEMS.get(exc.errno, f"{exc.strerror or exc}; {HOST_FIX}, or {PORT_FIX}")


@contextlib.contextmanager
def listening_errors(sock: socket.socket, host: str, port: int) -> Iterator[None]:
    """A failure to bind or listen closes the socket and becomes a ServiceError that says why and the fix."""
    try:
        yield
    except OSError as exc:
        sock.close()
        raise ServiceError(f"cannot listen on {address(host, port)}: {listen_problem(exc)}") from None


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: any free port) but not listening, so clients are refused until the
    model is loaded; a port in use or an address not on this machine fails here, before the slow load."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)  # as uvicorn picks the family
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait out TIME_WAIT
    with listening_errors(sock, host, port):
        sock.bind((host, port))
    return sock


def listen(sock: socket.socket, backlog: int) -> str:
    """Start accepting connections on `sock`; its URL. Two servers can bind one port until one listens,
    so a port taken while the model loaded fails here."""
    host, port = sock.getsockname()[:2]
    with listening_errors(sock, host, port):
        sock.listen(backlog)
    return f"http://{address(host, port)}"


def server_config(services: dict[str, Service], default: str, **options: Any) -> Any:
    """A uvicorn.Config for `services` (see create_app), with the keep-alive (see the module docstring)."""
    import uvicorn

    keep_alive = services[default].settings.keep_alive_seconds
    return uvicorn.Config(create_app(services, default), timeout_keep_alive=keep_alive, **options)


def run(services: dict[str, Service], default: str, sock: socket.socket) -> None:
    """Serve on `sock` (from `bind`) until interrupted; on Ctrl-C requests in flight are answered before it stops."""
    import uvicorn

    server = uvicorn.Server(server_config(services, default))
    url = listen(sock, server.config.backlog)
    log.info("Uvicorn running on %s (Press CTRL+C to quit)", url)  # uvicorn's own line, which it skips for a given socket
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops: exit 0, as uvicorn.run does
        server.run(sockets=[sock])
