"""`finetune serve`: a real uvicorn server on 127.0.0.1 serving from a real MLflow registry.

The tests share one registry and one server (training is the slow part); the hot-swap test
rolls the champion back to v1, so it leaves them as it found them.
"""

import contextlib
import copy
import dataclasses
import http.client
import http.server
import importlib.metadata
import itertools
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import yaml

from pipeline import tracking
from pipeline.cli import main
from pipeline.errors import ConfigError, ServiceError
from pipeline.params import ServingConfig
from pipeline.serving.serve import NON_SPACE, bind, listen, load_services, max_body_bytes, server_config
from pipeline.stages import run_stage
from pipeline.tasks import load_params
from pipeline.tasks.text_classification import TextClassificationTask
from tests.conftest import INTENT_VOCAB, LABELS, ROOT, make_intent_rows, make_rows, tiny_params, write_csv, write_params
from tests.ner_data import NAMES, make_sentences, ner_params, write_conll
from tests.test_promotion import NAME, train_and_register
from tests.test_translation import SAMPLE, translation_section

pytestmark = pytest.mark.e2e

FINETUNE = Path(sys.executable).parent / "finetune"
POSITIVE, NEUTRAL = "The company said profit rose in quarter.", "Its group shares listed on held year."
# Small limits, so the tests can exceed them cheaply; a 20-text request is larger than a batch.
# A longer batch wait than the default keeps batching visible on a busy 2-core machine.
LIMITS = {"max_batch_size": 8, "batch_wait_ms": 50, "max_texts_per_request": 20, "max_text_chars": 200,
          "reload_seconds": 0.5}


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model) -> Iterator[Path]:
    """A workspace (the cwd) whose registry holds one trained champion, v1; shared by the module."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("serve")
        patch.chdir(root)
        write_csv(root / "data" / "sample.csv", make_rows(300))
        train_and_register(tiny_model, 1.0e-3, sentiment__train__epochs=6)  # as in test_cli: learns the tiny data
        yield root


@contextlib.contextmanager
def serving(params_file: Path = Path("params.yaml")) -> Iterator[str]:
    """A real uvicorn server for every pipeline of `params_file` (with LIMITS) on 127.0.0.1, an ephemeral
    port, in a thread; its URL."""
    import uvicorn

    params = load_params(params_file)
    tracking.configure(params.tracking.experiment)
    settings = dataclasses.replace(params.serving, **LIMITS)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(load_services(params, settings), settings.pipeline, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive())
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def url(registry) -> Iterator[str]:
    """The server of the workspace's params.yaml: the sentiment champion alone."""
    with serving() as url:
        yield url


def test_predict_health_version_and_docs(url):
    import mlflow

    with httpx.Client(base_url=url) as client:
        assert client.get("/health").json() == {"status": "ok", "model_version": "1",
                                                "pipelines": {"sentiment": {"status": "ok", "model_version": "1"}}}
        run_id = mlflow.MlflowClient().get_model_version(NAME, "1").run_id
        # No registry.onnx in the tiny params: runtime onnx falls back to PyTorch (tests/test_export.py has the export).
        version = {"name": NAME, "version": "1", "alias": "champion", "run_id": run_id, "runtime": "torch"}
        assert client.get("/version").json() == {**version, "pipelines": {"sentiment": version}}
        assert client.get("/sentiment/version").json() == version

        response = client.post("/predict", json={"texts": [POSITIVE, NEUTRAL]})
        assert response.status_code == 200
        body = response.json()
        assert body["model_version"] == "1"
        assert [p["label"] for p in body["predictions"]] == ["positive", "neutral"]
        assert all(0.0 < p["score"] <= 1.0 for p in body["predictions"])

        assert client.post("/reload").json() == {"reloaded": False, "version": "1",
                                                 "pipelines": {"sentiment": {"reloaded": False, "version": "1"}}}
        assert client.post("/sentiment/reload").json() == {"reloaded": False, "version": "1"}
        routes = {"/predict", "/health", "/version", "/reload", "/sentiment/predict", "/sentiment/reload", "/sentiment/version"}
        assert routes <= client.get("/openapi.json").json()["paths"].keys()
        assert client.get("/docs").status_code == 200


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed: each sample's value by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_ready_version_header_and_prometheus_metrics(url):
    before = scrape(url)
    with httpx.Client(base_url=url) as client:
        assert client.get("/ready").json() == {"ready": True, "pipelines": {"sentiment": {"status": "ok", "model_version": "1"}}}
        for path in ("/predict", "/sentiment/predict"):
            answer = client.post(path, json={"texts": [POSITIVE, NEUTRAL]})
            assert answer.status_code == 200 and answer.headers["x-model-version"] == answer.json()["model_version"] == "1"
        assert client.post("/predict", json={"texts": []}).status_code == 422
    after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("finetune_requests_total", pipeline="sentiment", status="200") == 2  # /predict is sentiment's
    assert grew("finetune_requests_total", pipeline="sentiment", status="422") == 1
    assert grew("finetune_request_seconds_count", pipeline="sentiment") == 3
    assert grew("finetune_batch_texts_sum", pipeline="sentiment") == 4  # two calls of two texts (or one of four)
    assert after[("finetune_model_info", (("name", NAME), ("pipeline", "sentiment"), ("runtime", "torch"), ("version", "1")))] == 1
    assert after[("finetune_pipeline_ready", (("pipeline", "sentiment"),))] == 1
    assert after[("finetune_prediction_log_dropped_total", (("reason", "queue_full"),))] == 0
    assert ("finetune_prediction_log_queue_depth", ()) in after
    assert grew("finetune_prediction_log_written_total", pipeline="sentiment") in (0, 4)  # written by now, or still queued


def test_every_answer_is_logged_to_the_prediction_store_once(registry, tmp_path):
    from pipeline.monitoring.store import new_served, open_store, stored_rows

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["monitoring"] = {"db": str(tmp_path / "served.db")}
    texts = [f"{word} in quarter {i}" for i in range(12) for word in ("profit rose", "loss widened")]
    with serving(write_yaml(tmp_path / "params.yaml", params)) as url, httpx.Client(base_url=url) as client:
        answers = {}
        for start in range(0, len(texts), 4):
            body = client.post("/predict" if start % 8 else "/sentiment/predict", json={"texts": texts[start : start + 4]}).json()
            answers.update((text, (p["label"], p["score"], body["model_version"])) for text, p in zip(texts[start : start + 4], body["predictions"]))
    # The server stopped: what it answered is written, and its batch handed over to the monitor.
    engine = open_store(str(tmp_path / "served.db"), "sentiment")
    logged = stored_rows(engine, "sentiment", new_served(engine, "sentiment"), several=False)
    assert len(logged) == len(texts)
    assert {row["text"]: (p["counted"][0], pytest.approx(p["score"]), version) for row, p, version in logged} == answers


@pytest.mark.parametrize(
    "body, where, problem",
    [
        ('{"texts": ["Profit rose"', ["body", 24], "JSON decode error"),
        ('{"texts": "Profit rose"}', ["body", "texts"], "Input should be a valid list"),
        ('{"texts": ["Profit rose", 7]}', ["body", "texts", 1], "Input should be a valid string"),
        ('{"text": ["Profit rose"]}', ["body", "texts"], "Field required"),
        ('{"texts": []}', ["body", "texts"], "List should have at least 1 item"),
        (json.dumps({"texts": ["Profit rose"] * 21}), ["body", "texts"], "List should have at most 20 items"),
        (json.dumps({"texts": ["Profit rose", "x" * 201]}), ["body", "texts", 1], "String should have at most 200 characters"),
        ('{"texts": ["Profit rose", ""]}', ["body", "texts", 1], "String should have at least 1 character"),
        ('{"texts": ["Profit rose", " \\u2003\\n"]}', ["body", "texts", 1], "String should hold a character other than whitespace"),
    ],
    ids=["malformed-json", "not-a-list", "not-a-string", "no-texts-key", "empty-list", "too-many-texts",
         "text-too-long", "empty-text", "blank-text"],
)
def test_bad_requests_get_a_4xx_naming_the_problem(url, body, where, problem):
    response = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert any(error["loc"] == where and problem in error["msg"] for error in response.json()["detail"])


def test_a_body_not_sent_as_json_gets_a_415(url):
    response = httpx.post(f"{url}/predict", data={"texts": "Profit rose"})  # a form, as `curl -d` sends
    assert response.status_code == 415 and "content-type: application/json" in response.json()["detail"]


def test_a_body_that_is_not_utf8_gets_a_400(url):
    response = httpx.post(f"{url}/predict", content=b'{"texts": ["\xff"]}', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"detail": "the body is not UTF-8 text: send the JSON encoded in UTF-8"}


def test_an_oversized_body_gets_a_413_before_it_is_read(url):
    limit = max_body_bytes(ServingConfig(**LIMITS))
    body = b'{"texts": ["' + b"x" * limit + b'"]}'
    response = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and f"at most {limit} are accepted" in response.json()["detail"]


def test_a_body_of_unknown_length_gets_a_411(url):
    chunked = iter([b'{"texts": ', b'["Profit rose"]}'])  # a generator body is sent chunked, without Content-Length
    response = httpx.post(f"{url}/predict", content=chunked, headers={"content-type": "application/json"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_fifty_clients_for_thirty_seconds_get_no_server_error(url, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(row["text"] for row in make_rows(200, seed=9)), encoding="utf-8")
    code = main(["loadtest", "--url", url, "--file", str(texts), "--clients", "50", "--seconds", "30"])
    report = json.loads(capsys.readouterr().out)  # printed before the exit code is decided, so a failure shows its figures
    with capsys.disabled():
        print(f"\nfinetune loadtest, 50 clients x 30 s: {report['requests']} requests, {report['requests_per_second']}/s, "
              f"p50 {report['p50_latency_ms']} ms, p99 {report['p99_latency_ms']} ms, statuses {report['status_counts']}, "
              f"failed connections {report['failed_connections_by_error']}")
    assert code == 0 and report["status_counts"] == {"200": report["requests"]} and report["requests"] > 50
    assert 0 < report["p50_latency_ms"] <= report["p99_latency_ms"]


def test_an_idle_connection_outlives_the_clients_keep_alive(url):
    # httpx reuses a pooled connection for up to 5 s idle; a server that closes it sooner races the
    # client's next request, which then fails unanswered (the likely cause of the 50-client test's failure).
    # http.client keeps its connection as long as the server does, so that failure shows every time here.
    parts = httpx.URL(url)
    connection = http.client.HTTPConnection(parts.host, parts.port, timeout=10)
    try:
        connection.request("GET", "/health")
        assert json.loads(connection.getresponse().read())["status"] == "ok"
        time.sleep(httpx.Limits().keepalive_expiry + 1)
        connection.request("GET", "/health")  # on the same connection, as a pooled client would
        assert json.loads(connection.getresponse().read())["status"] == "ok"
    finally:
        connection.close()


def test_loadtest_explains_that_nothing_answers(workspace, capsys):
    with socket.socket() as bound:  # bound, never listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        assert main(["loadtest", "--url", url, "--seconds", "1", POSITIVE]) == 5
    assert capsys.readouterr() == ("", f"error: nothing answers at {url} (ConnectError: All connection attempts failed); "
                                       "start `finetune serve` there, or pass --url\n")


class DropsPredictions(http.server.BaseHTTPRequestHandler):
    """A broken server: answers /health, but reads each /predict and hangs up without an answer."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_loadtest_names_why_connections_failed(workspace, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DropsPredictions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = main(["loadtest", "--url", f"http://127.0.0.1:{server.server_port}", "--clients", "2", "--seconds", "1", POSITIVE])
    finally:
        server.shutdown()
        server.server_close()
    report = json.loads(capsys.readouterr().out)
    assert code == 5 and report["status_counts"] == {"0": report["failed_connections"]}
    assert report["failed_connections_by_error"] == {
        "RemoteProtocolError: Server disconnected without sending a response.": report["failed_connections"]}


def test_concurrent_requests_share_model_calls(url, monkeypatch):
    calls = []
    real_predict = TextClassificationTask.predict

    def counted_predict(self, model, tokenizer, examples):
        calls.append(len(examples))
        return real_predict(self, model, tokenizer, examples)

    monkeypatch.setattr(TextClassificationTask, "predict", counted_predict)
    texts = [row["text"] for row in make_rows(20, seed=5)]
    with httpx.Client(base_url=url) as client, ThreadPoolExecutor(len(texts)) as pool:
        alone = client.post("/predict", json={"texts": texts}).json()["predictions"]
        assert calls == [20]  # larger than max_batch_size: scored alone, never split
        calls.clear()
        start = threading.Barrier(len(texts))

        def one(text: str) -> httpx.Response:
            start.wait()
            return client.post("/predict", json={"texts": [text]})

        responses = list(pool.map(one, texts))
    assert [r.status_code for r in responses] == [200] * len(texts)
    together = [r.json()["predictions"][0] for r in responses]
    assert [p["label"] for p in together] == [p["label"] for p in alone]  # each answer went to its request
    assert [p["score"] for p in together] == pytest.approx([p["score"] for p in alone], abs=1e-4)
    assert sum(calls) == len(texts) and len(calls) < len(texts) and max(calls) <= LIMITS["max_batch_size"]


def test_a_new_champion_is_swapped_in_without_failed_requests(url, tiny_model):
    import mlflow

    results: list[tuple[int | None, str]] = []  # (status, model version or error) per request
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                try:
                    response = client.post("/predict", json={"texts": [POSITIVE, NEUTRAL]})
                    answer = response.json()["model_version"] if response.is_success else response.text
                    results.append((response.status_code, answer))
                except httpx.HTTPError as exc:
                    results.append((None, repr(exc)))
                time.sleep(0.02)

    client_thread = threading.Thread(target=keep_predicting)
    client_thread.start()
    try:
        # A second version, promoted by hand as from the MLflow UI (half an epoch rarely beats v1 on its
        # own); the watcher (every 0.5 s) notices the alias move.
        decision = train_and_register(tiny_model, 1.0e-3, sentiment__train__epochs=0.5, sentiment__train__seed=7)
        assert decision["challenger"]["version"] == "2"
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "2")
        wait_until(lambda: bool(results) and results[-1][1] == "2")

        # A rollback is a promotion too; POST /reload switches without waiting for the watcher.
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
        assert httpx.post(f"{url}/reload").json()["version"] == "1"
        wait_until(lambda: bool(results) and results[-1][1] == "1")
    finally:
        stop.set()
        client_thread.join()
    assert [status for status, _ in results] == [200] * len(results)
    switches = [version for i, (_, version) in enumerate(results) if i == 0 or results[i - 1][1] != version]
    assert switches == ["1", "2", "1"]
    assert httpx.get(f"{url}/version").json()["version"] == "1"


def start_replica(params_file: Path, output: Path) -> tuple[subprocess.Popen, str]:
    """A `finetune serve` process on a free port, its output to a file (a pipe nobody reads would fill
    and stall it); the process and its URL once it listens."""
    with output.open("w") as sink:
        server = subprocess.Popen([str(FINETUNE), "--params", str(params_file), "serve", "--port", "0"], stdout=sink, stderr=subprocess.STDOUT)
    found = None

    def listening() -> bool:
        nonlocal found
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", output.read_text())
        return bool(found) or server.poll() is not None

    wait_until(listening, timeout=120)
    assert found, f"the replica exited before listening:\n{output.read_text()}"
    return server, found[1]


def test_two_replicas_under_load_both_take_a_promotion_and_the_monitor_sees_every_answer_once(registry, tiny_model, tmp_path,
                                                                                             prefect_server):
    import mlflow
    from sqlalchemy import text as sql

    from flows.monitor import monitor
    from pipeline.monitoring.store import new_served, open_store
    from pipeline.registry import load_registered
    from pipeline.tasks import get_task

    client = mlflow.MlflowClient()
    if not any(str(v.version) == "2" for v in client.search_model_versions(f"name='{NAME}'")):  # the hot-swap test made it
        train_and_register(tiny_model, 1.0e-3, sentiment__train__epochs=0.5, sentiment__train__seed=7)
    client.set_registered_model_alias(NAME, "champion", "1")
    texts = [row["text"] for row in make_rows(120, seed=21)]
    task = get_task("sentiment", load_params().pipeline("sentiment"))
    expected = {version: dict(zip(texts, (p["label"] for p in task.predict(*load_registered(task, f"models:/{NAME}/{version}"),
                                                                          [{"text": t} for t in texts]))))
                for version in ("1", "2")}
    assert expected["1"] != expected["2"]  # so an answer tells which version made it

    params_text = Path("params.yaml").read_text()
    params = yaml.safe_load(params_text)
    params["serving"] = {**params.get("serving", {}), "reload_seconds": 0.5}
    params["monitoring"] = {"db": str(tmp_path / "predictions.db")}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))  # the replicas' and the monitor's
    replicas, answers, stop = [], [], threading.Event()  # answers: (replica, status, header, body version, texts, labels)

    def balance(seed: int) -> None:
        """One client behind a round-robin load balancer."""
        pick = random.Random(seed)
        with httpx.Client(timeout=60) as http:
            for turn in itertools.count(seed):
                if stop.is_set():
                    return
                sent = pick.sample(texts, 2)
                index = turn % len(replicas)
                response = http.post(f"{replicas[index][1]}/predict", json={"texts": sent})
                body = response.json() if response.is_success else {}
                answers.append((index, response.status_code, response.headers.get("x-model-version"), body.get("model_version"),
                                sent, [p["label"] for p in body.get("predictions", [])]))

    try:
        replicas = [start_replica(Path("params.yaml"), tmp_path / f"replica-{i}.log") for i in range(2)]
        clients = [threading.Thread(target=balance, args=(seed,)) for seed in range(4)]
        for thread in clients:
            thread.start()
        wait_until(lambda: len(answers) > 40)
        client.set_registered_model_alias(NAME, "champion", "2")  # a promotion in the middle of the load
        wait_until(lambda: all(httpx.get(f"{url}/version").json()["version"] == "2" for _, url in replicas), timeout=30)
        served_before = len(answers)
        wait_until(lambda: len(answers) > served_before + 40)
        stop.set()
        for thread in clients:
            thread.join()
    finally:
        stop.set()
        for server, _ in replicas:
            server.send_signal(signal.SIGINT)  # Ctrl-C: what is queued is written, the batches handed over
        for server, _ in replicas:
            server.wait(timeout=60)
        Path("params.yaml").write_text(params_text)

    assert {status for _, status, *_ in answers} == {200}
    assert all(header == version for _, _, header, version, _, _ in answers)
    assert all(labels == [expected[version][t] for t in sent] for _, _, _, version, sent, labels in answers)  # made by that version
    assert {(replica, version) for replica, _, _, version, _, _ in answers} == {(0, "1"), (1, "1"), (0, "2"), (1, "2")}  # both swapped
    assert all(server.returncode == 0 for server, _ in replicas)

    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        engine = open_store(str(tmp_path / "predictions.db"), "sentiment")
        served = new_served(engine, "sentiment")
        assert len({name.split("/")[1] for name in served}) == 2  # each replica wrote batches of its own
        report = monitor(pipeline="sentiment")
        by_champion = sum(len(sent) for _, _, _, version, sent, _ in answers if version == "2")
        assert (report["served_batches"], report["served_texts"]) == (len(served), by_champion)
        with engine.begin() as connection:
            rows = connection.execute(sql("SELECT count(*), count(DISTINCT batch || '#' || position) FROM predictions "
                                           "WHERE batch LIKE 'served/%'")).one()
        assert rows == (2 * len(answers), 2 * len(answers))  # every answered text, once
        assert new_served(engine, "sentiment") == [] and monitor(pipeline="sentiment") == {}  # checked once
    finally:
        Path("params.yaml").write_text(params_text)
        client.set_registered_model_alias(NAME, "champion", "1")  # as the module's other tests expect


def test_serving_settings_in_params_yaml(tmp_path, tiny_model):
    defaults = ServingConfig(pipeline="sentiment")  # serving.pipeline: null means the first in `pipelines`
    assert load_params(ROOT / "params.yaml").serving == defaults  # the file spells out the defaults
    params = tiny_params(tiny_model)
    assert load_params(write_params(tmp_path, params)).serving == defaults  # the section is optional
    params["serving"] = {"port": 9000, "reload_seconds": 5}
    assert load_params(write_params(tmp_path, params)).serving == ServingConfig(pipeline="sentiment", port=9000, reload_seconds=5.0)
    params["serving"] = {"prot": 9000}
    with pytest.raises(ConfigError, match="unknown key 'serving.prot'"):
        load_params(write_params(tmp_path, params))


def test_serve_command_explains_a_missing_model(registry, capsys):
    assert main(["serve", "--port", "0", "--model", f"models:/{NAME}/99"]) == 4
    assert f"error: cannot load model 'models:/{NAME}/99'" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--model", NAME]) == 4
    assert "must be models:/NAME@ALIAS or models:/NAME/VERSION" in capsys.readouterr().err


PORT_FIX = "pass --port or set serving.port in params.yaml"
HOST_FIX = "pass --host or set serving.host in params.yaml (127.0.0.1: this machine only, 0.0.0.0: every interface)"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another server listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_serve_refuses_a_port_in_use_before_loading_a_model(workspace, taken_port):
    # The workspace has no registry: a load before the bind would end in "cannot load model", exit 4.
    done = subprocess.run([str(FINETUNE), "serve", "--port", str(taken_port)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (
        5, f"error: cannot listen on 127.0.0.1:{taken_port}: the port is in use (another finetune serve?); {PORT_FIX}\n")


@pytest.mark.parametrize(
    "host, port, problem",
    [
        ("192.0.2.1", "8000", f"the address is not one of this machine's; {HOST_FIX}"),  # TEST-NET-1: on no machine
        ("no-such-host.invalid", "8000", f"the host name is not known (Name or service not known); {HOST_FIX}"),
    ],
    ids=["address-not-here", "unknown-host"],
)
def test_serve_explains_an_address_it_cannot_listen_on(workspace, capsys, host, port, problem):
    assert main(["serve", "--host", host, "--port", port]) == 5
    assert capsys.readouterr().err == f"error: cannot listen on {host}:{port}: {problem}\n"


def test_a_port_taken_while_the_model_loads_fails_when_listening():
    # Two sockets can bind one port (SO_REUSEADDR) until one listens: two servers started together.
    first = bind("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = bind("127.0.0.1", port)
    with first, second:
        listen(first, 8)
        with pytest.raises(ServiceError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            listen(second, 8)


def test_finetune_serve_command(registry):
    server = subprocess.Popen([str(FINETUNE), "serve", "--port", "0"], cwd=registry, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, server.kill)
    watchdog.start()
    found = None
    try:
        for line in server.stderr:
            if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        assert found, "the server exited before listening"
        response = httpx.post(f"{found[1]}/predict", json={"texts": [POSITIVE]})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "positive"
    finally:
        server.terminate()
        server.wait()
        watchdog.cancel()


# Several pipelines in one server ------------------------------------------------------------------
PIPELINES = Path("pipelines.yaml")  # sentiment, intents, NER and translation, beside params.yaml (sentiment alone)
INTENTS, NER = "support-intents", "ner"  # registry names
SERVED = ("sentiment", "intents", "ner", "translation")
TO_REGISTERED = ("collect", "validate", "split", "augment", "train", "evaluate", "register")
# NER texts as a client sends them: spacing of its own, punctuation against the words.
NER_TEXTS = ["  Anna Berg, chief executive of Norvik Bank, said in Oslo on Monday.",
             "Siemens shares rose 3 percent after the  Brexit news in Frankfurt ."]


def pipelines_params(tiny_model: Path, **more: dict) -> dict:
    """params for sentiment, intents (a second text classifier, with 4 labels of its own), NER and translation,
    and `more` pipelines."""
    params = tiny_params(tiny_model)
    intents = copy.deepcopy(params["sentiment"])
    intents.update(type="text_classification", registry={"name": INTENTS})
    intents["data"].update(source="data/intents.csv", incoming="data/incoming/intents")
    intents["validate"]["labels"] = list(INTENT_VOCAB)
    params.update(pipelines=[*SERVED, *more], intents=intents, ner=ner_params(tiny_model)["ner"],
                  translation=translation_section(tiny_model), **more)
    return params


def write_yaml(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pipelines(registry, tiny_model) -> Path:
    """pipelines.yaml, whose intents, NER and translation pipelines are trained here to a v1 champion (sentiment's
    is `registry`'s)."""
    write_csv(Path("data/intents.csv"), make_intent_rows(240))
    write_conll(Path("data/ner.conll"), make_sentences(250))
    for suffix in (".de", ".en"):
        shutil.copy(SAMPLE.with_suffix(suffix), Path("data") / f"pairs{suffix}")
    write_yaml(PIPELINES, pipelines_params(tiny_model))
    for name in SERVED[1:]:
        for stage in TO_REGISTERED:
            run_stage(stage, name, PIPELINES)
    return PIPELINES


@pytest.fixture(scope="module")
def pipelines_url(pipelines) -> Iterator[str]:
    """One server for the four pipelines."""
    with serving(pipelines) as url:
        yield url


def test_each_pipeline_answers_on_its_own_route_in_its_type_s_shape(pipelines_url):
    with httpx.Client(base_url=pipelines_url) as client:
        sentiment = client.post("/sentiment/predict", json={"texts": [POSITIVE, NEUTRAL]}).json()
        assert sentiment["model_version"] == "1"
        assert [set(p) for p in sentiment["predictions"]] == [{"label", "score"}] * 2
        assert {p["label"] for p in sentiment["predictions"]} <= set(LABELS)
        assert client.post("/predict", json={"texts": [POSITIVE, NEUTRAL]}).json() == sentiment  # serving.pipeline: the first

        messages = [row["text"] for row in make_intent_rows(3, seed=4)]
        intents = client.post("/intents/predict", json={"texts": messages, "top_k": 4}).json()["predictions"]
        for prediction in intents:
            top = prediction["top_k"]
            assert [p["label"] for p in top[:1]] == [prediction["label"]] and top[0]["score"] == prediction["score"]
            assert {p["label"] for p in top} == set(INTENT_VOCAB)  # 4 of 4: every label, most probable first
            assert [p["score"] for p in top] == sorted((p["score"] for p in top), reverse=True)
            assert sum(p["score"] for p in top) == pytest.approx(1, abs=1e-4)
        two = client.post("/intents/predict", json={"texts": messages, "top_k": 2}).json()["predictions"]
        assert [p["top_k"] for p in two] == [p["top_k"][:2] for p in intents]

        ner = client.post("/ner/predict", json={"texts": NER_TEXTS}).json()
        assert ner["model_version"] == "1"
        found = [(text, entity) for text, p in zip(NER_TEXTS, ner["predictions"]) for entity in p["entities"]]
        assert found, "the tiny model tags some entities"
        for text, entity in found:
            assert set(entity) == {"type", "start", "end", "text", "score"} and entity["type"] in NAMES
            assert text[entity["start"] : entity["end"]] == entity["text"]  # offsets into the text as sent
        assert {entity["text"] for _, entity in found} & {"Anna Berg", "Norvik Bank", "Oslo", "Siemens", "Frankfurt"}, found

        translation = client.post("/translation/predict", json={"texts": ["Die Bank meldete einen Verlust."]}).json()
        assert translation["model_version"] == "1"
        assert [set(p) for p in translation["predictions"]] == [{"translation"}]
        assert isinstance(translation["predictions"][0]["translation"], str)

        health = client.get("/health").json()
        assert health == {"status": "ok", "model_version": "1", "pipelines": {
            name: {"status": "ok", "model_version": "1"} for name in SERVED}}


def test_requests_asking_for_different_top_k_share_model_calls(pipelines_url, monkeypatch):
    calls = []
    real_predict = TextClassificationTask.predict

    def counted_predict(self, model, tokenizer, examples, **options):
        calls.append(options)
        return real_predict(self, model, tokenizer, examples, **options)

    monkeypatch.setattr(TextClassificationTask, "predict", counted_predict)
    asks = [None, 1, 4, None, 2, 3]
    start = threading.Barrier(len(asks))

    def one(top_k: int | None) -> list[dict]:
        start.wait()
        body = {"texts": [POSITIVE]} | ({"top_k": top_k} if top_k else {})
        return httpx.post(f"{pipelines_url}/intents/predict", json=body).json()["predictions"]

    with ThreadPoolExecutor(len(asks)) as pool:
        answers = [prediction for predictions in pool.map(one, asks) for prediction in predictions]
    assert [len(answer.get("top_k", [])) for answer in answers] == [top_k or 0 for top_k in asks]
    assert all(answer["top_k"][0]["label"] == answer["label"] for answer in answers if "top_k" in answer)
    assert len(calls) < len(asks)  # the batch's largest top_k answers all of its requests


@pytest.mark.parametrize(
    "path, body, where, problem",
    [
        ("/intents/predict", {"top_k": 5}, ["body", "top_k"], "Input should be less than or equal to 4"),
        ("/intents/predict", {"top_k": 0}, ["body", "top_k"], "Input should be greater than or equal to 1"),
        ("/sentiment/predict", {"top_k": 4}, ["body", "top_k"], "Input should be less than or equal to 3"),
        ("/predict", {"top_k": 4}, ["body", "top_k"], "Input should be less than or equal to 3"),
        ("/intents/predict", {"top_k": "2"}, ["body", "top_k"], "Input should be a valid integer"),
        ("/intents/predict", {"top_k": True}, ["body", "top_k"], "Input should be a valid integer"),
        ("/ner/predict", {"top_k": 2}, ["body", "top_k"], "Extra inputs are not permitted"),
        ("/ner/predict", {"texts": ["Anna Berg", " "]}, ["body", "texts", 1], "String should hold a character other than whitespace"),
    ],
    ids=["above-the-labels", "zero", "above-sentiment-s-labels", "legacy-route", "a-string", "a-boolean", "ner-has-no-top-k",
         "ner-blank-text"],
)
def test_top_k_and_texts_are_checked_per_pipeline(pipelines_url, path, body, where, problem):
    response = httpx.post(f"{pipelines_url}{path}", json={"texts": [POSITIVE], **body})
    assert response.status_code == 422
    assert [(error["loc"], error["msg"]) for error in response.json()["detail"]] == [(where, problem)]


@pytest.mark.parametrize("name", SERVED[1:])
def test_the_request_limits_hold_on_every_route(pipelines_url, name):
    url, json_body = f"{pipelines_url}/{name}/predict", {"content-type": "application/json"}
    too_many = httpx.post(url, json={"texts": ["Profit rose"] * 21})
    assert too_many.status_code == 422 and "List should have at most 20 items" in too_many.text
    too_long = httpx.post(url, json={"texts": ["x" * 201]})
    assert too_long.status_code == 422 and "String should have at most 200 characters" in too_long.text
    assert httpx.post(url, data={"texts": "Profit rose"}).status_code == 415
    oversized = b'{"texts": ["' + b"x" * max_body_bytes(ServingConfig(**LIMITS)) + b'"]}'
    assert httpx.post(url, content=oversized, headers=json_body).status_code == 413
    assert httpx.post(url, content=iter([b'{"texts": ', b'["Profit rose"]}']), headers=json_body).status_code == 411


def test_openapi_has_a_request_and_response_schema_per_type(pipelines_url):
    schema = httpx.get(f"{pipelines_url}/openapi.json").json()

    def bodies(path: str) -> tuple[str, str]:
        post = schema["paths"][path]["post"]
        request = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        response = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        return request.rsplit("/", 1)[1], response.rsplit("/", 1)[1]

    assert {path: bodies(path) for path in ("/predict", *(f"/{name}/predict" for name in SERVED))} == {
        "/predict": ("SentimentRequest", "TextClassificationResponse"),
        "/sentiment/predict": ("SentimentRequest", "TextClassificationResponse"),
        "/intents/predict": ("IntentsRequest", "TextClassificationResponse"),
        "/ner/predict": ("NerRequest", "TokenClassificationResponse"),
        "/translation/predict": ("TranslationRequest", "TranslationResponse"),
    }
    schemas = schema["components"]["schemas"]
    top_k = {name: schemas[name]["properties"].get("top_k") for name in ("SentimentRequest", "IntentsRequest", "NerRequest")}
    assert [top_k["SentimentRequest"]["anyOf"][0]["maximum"], top_k["IntentsRequest"]["anyOf"][0]["maximum"]] == [3, 4]
    assert top_k["NerRequest"] is None
    assert schemas["NerRequest"]["properties"]["texts"]["items"]["maxLength"] == LIMITS["max_text_chars"]
    assert set(schemas["Label"]["properties"]) == {"label", "score", "top_k"}
    assert set(schemas["Entity"]["properties"]) == {"type", "start", "end", "text", "score"}
    assert set(schemas["Translation"]["properties"]) == {"translation"}
    assert {"/sentiment/reload", "/ner/version", "/health", "/version", "/reload"} <= schema["paths"].keys()


def test_promoting_one_pipeline_swaps_only_its_route(pipelines_url):
    import mlflow

    results: dict[str, list[tuple[int | None, str]]] = {"/predict": [], **{f"/{name}/predict": [] for name in SERVED}}
    texts = {"/ner/predict": NER_TEXTS[0], "/translation/predict": "Die Bank meldete einen Verlust."}
    stop = threading.Event()

    def keep_predicting(path: str) -> None:
        with httpx.Client(base_url=pipelines_url) as client:
            while not stop.is_set():
                try:
                    response = client.post(path, json={"texts": [texts.get(path, POSITIVE)]})
                    answer = response.json()["model_version"] if response.is_success else response.text
                    results[path].append((response.status_code, answer))
                except httpx.HTTPError as exc:
                    results[path].append((None, repr(exc)))
                time.sleep(0.02)

    clients = [threading.Thread(target=keep_predicting, args=(path,)) for path in results]
    for client in clients:
        client.start()
    registry = mlflow.MlflowClient()
    try:
        # A new intents version, promoted by hand as from the MLflow UI; the watcher (every 0.5 s) notices the move.
        assert registry.copy_model_version(f"models:/{INTENTS}/1", INTENTS).version == 2
        registry.set_registered_model_alias(INTENTS, "champion", "2")
        wait_until(lambda: httpx.get(f"{pipelines_url}/intents/version").json()["version"] == "2")
        wait_until(lambda: bool(results["/intents/predict"]) and results["/intents/predict"][-1][1] == "2")
        versions = httpx.get(f"{pipelines_url}/version").json()
        assert {name: v["version"] for name, v in versions["pipelines"].items()} == {**dict.fromkeys(SERVED, "1"), "intents": "2"}
        assert versions["version"] == "1"  # the top level is /predict's pipeline, sentiment

        # The rollback through POST /reload, which checks every pipeline and reloads only the one that moved.
        registry.set_registered_model_alias(INTENTS, "champion", "1")
        assert httpx.post(f"{pipelines_url}/reload").json() == {"reloaded": False, "version": "1", "pipelines": {
            name: {"reloaded": name == "intents", "version": "1"} for name in SERVED}}
        wait_until(lambda: results["/intents/predict"][-1][1] == "1")
    finally:
        stop.set()
        for client in clients:
            client.join()
    for path, answers in results.items():
        assert answers and {status for status, _ in answers} == {200}, path
    assert {path: {version for _, version in answers} for path, answers in results.items()} == {
        **dict.fromkeys(results, {"1"}), "/intents/predict": {"1", "2"}}


def test_finetune_serve_serves_the_pipelines_with_a_model_and_waits_for_the_others(pipelines, tiny_model):
    import mlflow

    later = {**ner_params(tiny_model)["ner"], "type": "token_classification", "registry": {"name": "ner-later"}}  # no version yet
    params = write_yaml(Path("later.yaml"), pipelines_params(tiny_model, later=later))
    server = subprocess.Popen([str(FINETUNE), "--params", str(params), "serve", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(180, server.kill)
    watchdog.start()
    lines = []
    try:
        for line in server.stdout:
            lines.append(line.rstrip("\n"))
            if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                break
        assert found, "the server exited before listening:\n" + "\n".join(lines)
        url = found[1]
        assert ("serve: POST /sentiment/predict and /predict: fin-sentiment v1 (models:/fin-sentiment@champion) "
                "with torch") in lines
        assert "serve: POST /ner/predict: ner v1 (models:/ner@champion) with torch" in lines
        assert ("serve: POST /later/predict: no model at models:/ner-later@champion yet: answers 503 until one is registered "
                "(checked every 30 s, or POST /reload)") in lines
        health, ready = httpx.get(f"{url}/health"), httpx.get(f"{url}/ready")
        assert health.status_code == 200 and health.json()["pipelines"]["later"] == {"status": "no_model", "model_version": None}
        assert ready.status_code == 503 and ready.json()["ready"] is False  # alive, not ready: no traffic yet
        assert ready.json()["pipelines"]["later"] == {"status": "no_model", "model_version": None}
        waiting = httpx.post(f"{url}/later/predict", json={"texts": NER_TEXTS})
        assert waiting.status_code == 503 and waiting.json()["detail"] == (
            "later has no model yet: nothing at models:/ner-later@champion; it is served once one is registered")
        assert httpx.post(f"{url}/ner/predict", json={"texts": NER_TEXTS}).status_code == 200

        registry = mlflow.MlflowClient()  # its first model: NER's v1 under its name
        registry.copy_model_version(f"models:/{NER}/1", "ner-later")
        registry.set_registered_model_alias("ner-later", "champion", "1")
        assert httpx.post(f"{url}/later/reload").json() == {"reloaded": True, "version": "1"}
        answered = httpx.post(f"{url}/later/predict", json={"texts": NER_TEXTS})
        assert answered.status_code == 200 and answered.json()["model_version"] == "1"
        assert httpx.get(f"{url}/ready").json() == {"ready": True, "pipelines": httpx.get(f"{url}/health").json()["pipelines"]}
    finally:
        server.terminate()
        server.wait()
        watchdog.cancel()


def test_finetune_serve_stops_when_no_pipeline_has_a_model(registry, tiny_model, capsys):
    params = tiny_params(tiny_model, sentiment__registry__name="unregistered")
    params.update(pipelines=["sentiment", "ner"], ner={**ner_params(tiny_model)["ner"], "registry": {"name": "unregistered-ner"}})
    assert main(["--params", str(write_yaml(Path("none.yaml"), params)), "serve", "--port", "0"]) == 4
    error = capsys.readouterr().err
    assert error.startswith("error: nothing to serve: no pipeline has a model yet (models:/unregistered@champion, "
                            "models:/unregistered-ner@champion in sqlite:///")
    assert error.endswith("; register one with `dvc repro`\n")
    assert error.count("\n") == 1



def test_every_route_lists_every_status_it_answers_with_and_its_body(pipelines_url):
    spec = httpx.get(f"{pipelines_url}/openapi.json").json()
    assert spec["info"]["version"] == importlib.metadata.version("finetune-pipeline")
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    statuses = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            statuses[f"{method.upper()} {path}"] = set(responses)
            assert all(responses[status]["content"] == problem for status in responses.keys() & {"400", "411", "413", "415"})
    predict = {"200", "400", "411", "413", "415", "422", "503"}
    assert statuses == {
        **{f"POST {path}": predict for path in ("/predict", *(f"/{name}/predict" for name in SERVED))},
        **{f"POST /{name}/reload": {"200", "400", "413", "503"} for name in SERVED}, "POST /reload": {"200", "400", "413", "503"},
        **{f"GET /{name}/version": {"200", "400", "413"} for name in SERVED}, "GET /version": {"200", "400", "413"},
        "GET /health": {"200", "400", "413"}, "GET /ready": {"200", "400", "413", "503"}, "GET /metrics": {"200", "400", "413"}}
    assert spec["paths"]["/ner/predict"]["post"]["responses"]["503"]["content"] == problem
    text = spec["components"]["schemas"]["NerRequest"]["properties"]["texts"]["items"]
    assert text == {"type": "string", "minLength": 1, "maxLength": LIMITS["max_text_chars"], "pattern": NON_SPACE}


def test_the_non_space_pattern_of_the_spec_is_python_s_whitespace_in_every_engine():
    """The server refuses a text that str.isspace() calls whitespace; the spec's pattern must say the same to Python's
    re (hypothesis draws with it) and to Rust's regex (schemathesis validates with it); every whitespace is below U+3100."""
    import jsonschema_rs

    rust = jsonschema_rs.validator_for({"type": "string", "pattern": NON_SPACE})
    characters = [chr(point) for point in range(0x3100) if not 0xD800 <= point < 0xE000]  # no lone surrogates
    assert [c for c in characters if (re.search(NON_SPACE, c) is None) != c.isspace()] == []
    assert [c for c in characters if rust.is_valid(c) == c.isspace()] == []


SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_schemathesis_finds_the_api_doing_what_its_spec_says(pipelines_url):
    """schemathesis generates requests from /openapi.json (every route it lists, so a route added later too) and runs
    all its checks on the answers: no server error, every status and body as documented, requests valid by the spec
    accepted and invalid ones refused. Bounded by examples per route; the seed is fixed, so a failure reproduces."""
    run = subprocess.run([str(SCHEMATHESIS), "run", f"{pipelines_url}/openapi.json", "--checks", "all",
                          "--max-examples", "50", "--seed", "1", "--workers", "1", "--request-timeout", "60"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
