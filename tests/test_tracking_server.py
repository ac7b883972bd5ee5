"""The whole pipeline against a real MLflow tracking server backed by PostgreSQL.

A module fixture creates a PostgreSQL cluster in a temp dir, starts it on 127.0.0.1 only,
creates a database, and starts `mlflow server` on it (artifacts proxied into a temp dir).
The test runs `dvc repro` with MLFLOW_TRACKING_URI pointing at that server and checks the
run, the registry, the artifacts and the database rows. Skips when PostgreSQL is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import make_rows, tiny_params, write_csv, write_params
from tests.test_dvc_pipeline import every_stage, init_repo, sh, stages_run

PG_USER = "postgres"  # PostgreSQL refuses to run as root; tests (and CI) run as root
DATABASE = "mlflow"
MLFLOW = Path(sys.executable).parent / "mlflow"


@dataclass
class TrackingServer:
    url: str  # http://127.0.0.1:PORT
    db_url: str  # postgresql://postgres@127.0.0.1:PORT/mlflow (trust auth, loopback only)
    artifacts: Path  # the server's --artifacts-destination


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    if found:  # e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb
        real = Path(found).resolve().parent
        if (real / "pg_ctl").exists():
            return real
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*args: str) -> list[str]:
    """The command run as the postgres system user when we are root, as ourselves otherwise."""
    if os.geteuid() != 0:
        return list(args)
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER], check=True)
    return ["runuser", "-u", PG_USER, "--", *args]


def run_checked(args: list[str], **kwargs) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def wait_for_health(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url}/health within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def tracking_server() -> Iterator[TrackingServer]:
    """PostgreSQL + `mlflow server` on loopback, both torn down at the end of the module."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is in the [test] extras")

    # Not pytest's tmp_path: its parents are root-only (0700), and the postgres user must own the cluster.
    base = Path(tempfile.mkdtemp(prefix="pg-mlflow-"))
    base.chmod(0o755)
    data, artifacts = base / "pgdata", base / "artifacts"
    artifacts.mkdir()
    if os.geteuid() == 0:
        as_postgres()  # creates the postgres user when missing
        shutil.chown(base, PG_USER)
    pg_port, mlflow_port = free_port(), free_port()
    server = None
    pg_started = False
    try:
        run_checked(as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-instructions"))
        # Loopback TCP only, and the unix socket inside the cluster's own folder (not /var/run/postgresql).
        options = f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {data}"
        run_checked(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-o", options, "-w", "-t", "60", "start"))
        pg_started = True
        connection = psycopg2.connect(host="127.0.0.1", port=pg_port, user=PG_USER, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
        connection.close()

        url = f"http://127.0.0.1:{mlflow_port}"
        log = base / "mlflow-server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner: not needed here
        with log.open("w") as out:
            server = subprocess.Popen(
                [str(MLFLOW), "server",
                 "--backend-store-uri", f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{pg_port}/{DATABASE}",
                 "--artifacts-destination", str(artifacts),
                 "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so teardown reaches its workers too
            )
        wait_for_health(url, server, log)
        yield TrackingServer(url=url, db_url=f"postgresql://{PG_USER}@127.0.0.1:{pg_port}/{DATABASE}", artifacts=artifacts)
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        if pg_started:
            subprocess.run(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.e2e
def test_dvc_repro_logs_registers_and_promotes_through_a_postgres_backed_server(tracking_server, tmp_path, tiny_model, monkeypatch):
    import mlflow
    import psycopg2

    from pipeline.registry import load_registered
    from pipeline.tasks import get_task, load_params

    # Small and quick: 150 rows, one epoch of the tiny model.
    write_csv(tmp_path / "data" / "sample.csv", make_rows(150))
    init_repo(tmp_path, tiny_params(tiny_model, sentiment__train__epochs=1))
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)  # sh() passes os.environ to dvc

    first = sh("dvc", "repro", cwd=tmp_path)
    assert stages_run(first) == every_stage("sentiment")
    assert not (tmp_path / "mlflow").exists()  # nothing went to the embedded store
    metrics = yaml.safe_load((tmp_path / "metrics" / "sentiment.json").read_text())
    promotion = yaml.safe_load((tmp_path / "reports" / "sentiment" / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["challenger"]["version"] == "1"

    # The run, through the server: params, final metrics, lineage tags.
    client = mlflow.MlflowClient(tracking_uri=tracking_server.url)
    champion = client.get_model_version_by_alias("fin-sentiment", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("test").experiment_id
    assert run.data.params["train.learning_rate"] == "0.001" and float(run.data.params["train.epochs"]) == 1
    assert run.data.metrics["val_f1_macro"] == pytest.approx(metrics["val"]["f1_macro"])
    assert run.data.tags["promotion"] == "champion" and champion.tags["data_hash"] == run.data.tags["data_hash"]

    # The artifacts: in the server's --artifacts-destination, and downloadable through the server.
    assert champion.source.startswith(("models:/", "mlflow-artifacts:/")), champion.source
    stored = {p.name for p in tracking_server.artifacts.rglob("*") if p.is_file()}
    assert {"MLmodel", "model.safetensors", "learning_curves.png", "metrics.json", "promotion.json"} <= stored, sorted(stored)
    # The process-wide URI too: models:/ resolves through the registry URI, which follows it (an
    # earlier test in this session may have left it on a SQLite store).
    mlflow.set_tracking_uri(tracking_server.url)
    downloaded = Path(mlflow.artifacts.download_artifacts(
        artifact_uri="models:/fin-sentiment@champion", dst_path=str(tmp_path / "download"), tracking_uri=tracking_server.url))
    assert (downloaded / "MLmodel").exists() and any(downloaded.rglob("model.safetensors"))
    assert {"plots", "metrics.json", "promotion.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    # The project's own loader (what `finetune predict` and serving use), through the server.
    monkeypatch.chdir(tmp_path)
    task = get_task("sentiment", load_params(tmp_path / "params.yaml").task("sentiment"))
    model, tokenizer = load_registered(task, "models:/fin-sentiment@champion")
    [prediction] = task.predict(model, tokenizer, [{"text": "Operating profit rose to a record."}])
    assert task.format_prediction("x", prediction).split("\t")[0] in {"negative", "neutral", "positive"}

    # A second repro that cannot win (no macro-F1 gain exceeds 1.0): registers v2, champion stays v1.
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["sentiment"]["promotion"]["min_delta"] = 1.0
    write_params(tmp_path, params)
    second = sh("dvc", "repro", cwd=tmp_path)
    assert stages_run(second) == {"sources", "register@sentiment"}
    decision = yaml.safe_load((tmp_path / "reports" / "sentiment" / "promotion.json").read_text())
    assert not decision["promoted"] and decision["alias"] == "challenger"
    assert decision["champion"] == {"version": "1", "score": pytest.approx(metrics["val"]["f1_macro"])}  # re-scored via the server
    assert str(client.get_model_version_by_alias("fin-sentiment", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("fin-sentiment", "challenger").version) == "2"
    assert client.get_model_version("fin-sentiment", "2").description.startswith("Not promoted: ")

    # And the rows really are in PostgreSQL.
    with psycopg2.connect(tracking_server.db_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM registered_models")
        assert cursor.fetchall() == [("fin-sentiment",)]
        cursor.execute("SELECT version FROM model_versions WHERE name = %s ORDER BY version", ("fin-sentiment",))
        assert cursor.fetchall() == [(1,), (2,)]
        cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s ORDER BY alias", ("fin-sentiment",))
        assert cursor.fetchall() == [("challenger", 2), ("champion", 1)]
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cursor.fetchone() == ("FINISHED",)
    connection.close()
