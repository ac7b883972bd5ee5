"""The registry fails closed: a failing model registry stops the register stage and moves no alias.

A real `mlflow server` (SQLite backend) sits behind a small HTTP proxy in this process. The proxy
forwards everything until it is switched to answer 500 to every model-registry call; the register
stage then runs as the `finetune` command and must end in one `error:` line, exit 5, with the
aliases on the server as they were. And a tracking server that is up while its artifact store (S3)
is down: the train stage ends in one line too, with nothing trained or registered.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from pipeline import tracking
from tests.conftest import ROOT
from tests.mlflow_server import mlflow_server
from tests.processes import stop_group
from tests.s3 import CREDENTIALS, s3_server
from tests.test_promotion import NAME, PARAMS, train_and_register

FINETUNE = Path(sys.executable).parent / "finetune"
REGISTRY_CALL = re.compile(r"/(registered-models|model-versions)/")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FlakyProxy(ThreadingHTTPServer):
    """Forwards every request to `upstream`; once `failing` is set, answers registry calls with 500."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), Forward)
        self.upstream = urlsplit(upstream)
        self.failing = False
        self.refused = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Forward(BaseHTTPRequestHandler):
    server: FlakyProxy

    def forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.failing and REGISTRY_CALL.search(self.path):
            self.server.refused += 1
            return self.reply(500, [("Content-Type", "text/plain")], b"registry unavailable")
        upstream = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        self.reply(response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP], response.read())
        upstream.close()

    def reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    def log_message(self, format: str, *args) -> None:  # quiet: pytest shows failures, not every request
        pass


@pytest.fixture
def tracking_server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on SQLite and a local artifact folder, on a free loopback port."""
    base = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(f"sqlite:///{base / 'mlflow.db'}", str(base / "artifacts"), base) as url:
        yield url


@pytest.fixture
def proxy(tracking_server) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(tracking_server)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.e2e  # 30 s on idle cores, 50 s on busy ones: a server to start, a model to train, a command to load
def test_a_failing_registry_stops_register_and_moves_no_alias(workspace, tiny_model, tracking_server, proxy, monkeypatch):
    import mlflow

    monkeypatch.setattr(tracking, "USER_TRACKING_URI", proxy.url)  # what MLFLOW_TRACKING_URI sets at import
    assert train_and_register(tiny_model, 1.0e-3, sentiment__train__epochs=1)["alias"] == "champion"

    proxy.failing = True  # then register again: it would be version 2
    # Two quick retries instead of MLflow's default 7 with exponential backoff (about 4 minutes).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": proxy.url,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
    done = subprocess.run([str(FINETUNE), "stage", "register", "--pipeline", "sentiment"],
                          env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: register[sentiment], no alias moved: the MLflow store") and "500" in last, last
    assert proxy.refused == 3  # the first try and two retries, then it gave up
    client = mlflow.MlflowClient(tracking_uri=tracking_server)  # straight to the server, past the proxy
    assert {alias: str(v) for alias, v in client.get_registered_model(NAME).aliases.items()} == {"champion": "1"}
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]


@pytest.mark.e2e  # about 40 s: an S3-compatible endpoint and a tracking server to start, a few stages to run
def test_an_artifact_store_that_is_down_fails_train_in_one_line(workspace, tiny_model, tmp_path_factory, monkeypatch):
    import mlflow

    from pipeline.stages import run_stage
    from tests.conftest import tiny_params, write_params

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    write_params(Path("."), tiny_params(tiny_model, sentiment__train__epochs=1))
    for stage in ("collect", "validate", "split", "augment"):  # they log nothing to MLflow
        run_stage(stage, "sentiment", PARAMS)
    base = tmp_path_factory.mktemp("artifacts-down")
    with s3_server(base / "moto.log") as s3, mlflow_server(
            f"sqlite:///{base / 'mlflow.db'}", f"{s3.create_bucket('artifacts-down')}/mlflow", base, s3.endpoint) as url:
        stop_group(s3.server)  # S3 goes down; the tracking server stays up, and answers 500 to every upload
        # One quick retry instead of MLflow's 7 with backoff (it also retries the connection the failed upload broke).
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": url,
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
        done = subprocess.run([str(FINETUNE), "stage", "train", "--pipeline", "sentiment"], env=env, capture_output=True, text=True,
                              timeout=300)

        assert done.returncode == 5 and "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: train[sentiment]: the MLflow store {url} failed (an upload or download through the "
                               "server's artifact proxy: see its log): API request to "), last
        assert not Path("models/sentiment/model.safetensors").exists()
        client = mlflow.MlflowClient(tracking_uri=url)
        [run] = client.search_runs([client.get_experiment_by_name("test").experiment_id])
        assert run.info.status == "FAILED" and not client.search_registered_models()


def test_no_model_and_no_alias_mean_no_champion(workspace):
    import mlflow

    from pipeline.registry import champion_version

    tracking.configure("test")
    client = mlflow.MlflowClient()
    assert champion_version(client, NAME) is None  # no registered model
    client.create_registered_model(NAME)
    assert champion_version(client, NAME) is None  # a model without the alias
