"""`finetune serve`: a registered model (the champion by default) behind HTTP.

- POST /predict scores texts. Requests that arrive together share one model call: they wait in
  an asyncio queue that a single worker drains into batches of up to `max_batch_size` texts.
- A watcher checks the registry alias every `reload_seconds` (POST /reload checks at once). A
  new version is loaded in the background and swapped in by replacing one reference: batches
  already running finish on the old model, and no request waits for the load or is dropped.
- The port is bound before the model loads, so a port in use fails at once; it listens once the
  model is loaded. Idle connections stay open `keep_alive_seconds`: uvicorn's default, 5 s, is
  exactly how long httpx keeps one for reuse, so a client could reuse a connection just as the
  server closed it, and that request failed unanswered.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run
time, and the request model is built inside `create_app` from the configured limits.
"""

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Iterator

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from pipeline.errors import ServiceError
from pipeline.params import ServingConfig
from pipeline.registry import load_registered, parse_model_uri, registered_version
from pipeline.tasks.base import Task

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one, so messages show beside its own


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
class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]


class Health(BaseModel):
    status: str
    model_version: str


class Version(BaseModel):
    name: str
    version: str
    alias: str | None
    run_id: str
    runtime: str


class Reload(BaseModel):
    reloaded: bool
    version: str


def request_model(settings: ServingConfig) -> type[BaseModel]:
    """The /predict body with this deployment's limits, so they are enforced and shown in /docs."""
    text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=settings.max_text_chars)]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        texts=(list[text], Field(min_length=1, max_length=settings.max_texts_per_request,
                                 examples=[["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."]])),
    )


# batching and hot-swap --------------------------------------------------------------------------
@dataclass
class Pending:
    """One request's texts, and the future its predictions are delivered to."""

    texts: list[str]
    result: asyncio.Future


class Service:
    """The served model, the queue that batches requests for it, and the reloads that replace it."""

    def __init__(self, task: Task, uri: str, settings: ServingConfig, served: Served):
        self.task, self.uri, self.settings, self.served = task, uri, settings, served
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.held: Pending | None = None  # a request that did not fit the last batch: first in the next
        self.reload_lock = asyncio.Lock()

    async def predict(self, texts: list[str]) -> tuple[str, list[dict]]:
        """(model version, predictions) for texts, scored together with whatever else is queued."""
        pending = Pending(texts, asyncio.get_running_loop().create_future())
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
            examples = [{"text": text} for pending in batch for text in pending.texts]
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
                    pending.result.set_result((served.version, predictions[start : start + len(pending.texts)]))
                start += len(pending.texts)

    async def reload(self) -> bool:
        """Serve the version the URI points at now, loading it first; True when it changed."""
        async with self.reload_lock:  # the watcher and POST /reload never load the same version twice
            found = await asyncio.to_thread(registered_version, self.uri)
            if str(found.version) == self.served.version:
                return False
            served = await asyncio.to_thread(load_version, self.task, self.uri, found, self.settings.runtime)
            previous, self.served = self.served.version, served  # one assignment: the swap
            log.info("now serving %s v%s with %s (was v%s)", served.name, served.version, served.runtime, previous)
            return True

    async def watch(self) -> None:
        """Check the registry every reload_seconds; a failed check keeps the current model."""
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            try:
                await self.reload()
            except Exception as exc:  # a registry hiccup must not take serving down
                log.warning("checking %s failed, still serving v%s: %s", self.uri, self.served.version, exc)

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


# the app ----------------------------------------------------------------------------------------
def max_body_bytes(settings: ServingConfig) -> int:
    """The largest body a valid request can have: every text at its longest, each char JSON-escaped (6 bytes)."""
    return settings.max_texts_per_request * (6 * settings.max_text_chars + 4) + 1024


async def json_only(request: Request) -> None:
    """415 unless the body is declared JSON: `curl -d` sends a form, which would fail less clearly."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the body as JSON, with the header content-type: application/json")


def create_app(service: Service) -> FastAPI:
    """The HTTP API of `service`; its worker and watcher run for the app's lifetime."""
    PredictRequest = request_model(service.settings)
    app = FastAPI(
        title="finetune-pipeline serving",
        summary=f"Scores texts with {service.uri}, batching concurrent requests.",
        lifespan=lambda app: service.running(),
    )
    body_limit = max_body_bytes(service.settings)

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):
        """413 before a byte of an oversized body is read, 411 for a /predict body of unknown length,
        400 for a length that is no number (uvicorn's parser answers that itself; another ASGI server may not)."""
        declared = request.headers.get("content-length")
        if request.method == "POST" and request.url.path == "/predict" and declared is None:
            return JSONResponse({"detail": "send a Content-Length header"}, status_code=411)
        if declared is not None and not declared.strip().isdigit():
            return JSONResponse({"detail": f"the Content-Length header must be a number of bytes, got {declared!r}"}, status_code=400)
        if declared is not None and int(declared) > body_limit:
            return JSONResponse({"detail": f"the body has {declared} bytes; at most {body_limit} are accepted "
                                           "(serving.max_texts_per_request x serving.max_text_chars)"}, status_code=413)
        return await call_next(request)

    @app.post("/predict", dependencies=[Depends(json_only)])
    async def predict(request: PredictRequest) -> PredictResponse:
        """Label each text; predictions are in the order of `texts`."""
        version, predictions = await service.predict(request.texts)
        return PredictResponse(model_version=version, predictions=predictions)

    @app.get("/health")
    async def health() -> Health:
        """Up and serving a model (the app only starts once one is loaded)."""
        return Health(status="ok", model_version=service.served.version)

    @app.get("/version")
    async def version() -> Version:
        """The model version being served and where it came from."""
        served = service.served
        return Version(name=served.name, version=served.version, alias=served.alias, run_id=served.run_id, runtime=served.runtime)

    @app.post("/reload")
    async def reload() -> Reload:
        """Check the registry now and swap in a new version if the alias moved."""
        try:
            reloaded = await service.reload()
        except Exception as exc:
            raise HTTPException(503, f"checking {service.uri} failed, still serving v{service.served.version}: {exc}")
        return Reload(reloaded=reloaded, version=service.served.version)

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


def server_config(service: Service, **options: Any) -> Any:
    """A uvicorn.Config for `service`, with its keep-alive (see the module docstring)."""
    import uvicorn

    return uvicorn.Config(create_app(service), timeout_keep_alive=service.settings.keep_alive_seconds, **options)


def run(service: Service, sock: socket.socket) -> None:
    """Serve on `sock` (from `bind`) until interrupted; on Ctrl-C requests in flight are answered before it stops."""
    import uvicorn

    server = uvicorn.Server(server_config(service))
    url = listen(sock, server.config.backlog)
    log.info("Uvicorn running on %s (Press CTRL+C to quit)", url)  # uvicorn's own line, which it skips for a given socket
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops: exit 0, as uvicorn.run does
        server.run(sockets=[sock])
