"""The whole pipeline against a real MLflow tracking server backed by PostgreSQL, artifacts on S3.

The session's PostgreSQL server (conftest's `postgres`: a cluster in a temp dir on 127.0.0.1 only)
gets a database, and a module fixture starts `mlflow server` on it, its artifacts proxied into a bucket
of the session's S3-compatible endpoint (conftest's `s3`: moto's server mode on loopback, standing in
for S3); clients send artifacts through the server and need no S3 credentials of their own.
The test runs `dvc repro` with MLFLOW_TRACKING_URI pointing at that server and checks the
run, the registry, the artifacts and the database rows. Skips when PostgreSQL is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import commit, committed_project, make_rows, tiny_params, write_csv, write_params
from tests.mlflow_server import mlflow_server
from tests.test_dvc_pipeline import BIN, every_stage, init_repo, sh, stages_run

DATABASE = "mlflow"


@dataclass
class TrackingServer:
    url: str  # http://127.0.0.1:PORT
    db_url: str  # postgresql://postgres@127.0.0.1:PORT/mlflow (trust auth, loopback only)
    bucket: str  # the S3 bucket of its --artifacts-destination s3://BUCKET/mlflow


@pytest.fixture(scope="module")
def tracking_server(postgres, s3) -> Iterator[TrackingServer]:
    """`mlflow server` on a PostgreSQL database with artifacts on S3, on loopback, torn down at the end of the module."""
    db_url = postgres.create_database(DATABASE)
    bucket = "mlflow-artifacts"
    artifacts = f"{s3.create_bucket(bucket)}/mlflow"
    base = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    try:
        with mlflow_server(db_url.replace("postgresql://", "postgresql+psycopg2://"), artifacts, base, s3.endpoint) as url:
            yield TrackingServer(url=url, db_url=db_url, bucket=bucket)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_dvc_repro_logs_registers_and_promotes_through_a_postgres_backed_server(tracking_server, s3, tmp_path, tiny_model, monkeypatch):
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

    # The artifacts: in the S3 bucket of the server's --artifacts-destination, and downloadable through the server.
    assert champion.source.startswith(("models:/", "mlflow-artifacts:/")), champion.source
    stored = {key.rsplit("/", 1)[-1] for key in s3.keys(tracking_server.bucket, "mlflow/")}
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
    task = get_task("sentiment", load_params(tmp_path / "params.yaml").pipeline("sentiment"))
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


def test_a_retrain_pushes_its_build_and_a_fresh_clone_restores_it_and_reruns_nothing(tracking_server, s3, prefect_server, tmp_path,
                                                                                      tiny_model, monkeypatch):
    """Shared storage: the retrain flow pushes to a DVC remote on S3 and records the build on the version;
    a fresh clone (its own DVC cache, nothing local) restores it with `finetune restore`, `dvc repro` there
    runs only the sources fingerprint, and a retrain there starts from the build and registers nothing new."""
    import mlflow

    from flows.retrain import retrain
    from flows.storage import REMOTE_TAG
    from flows.workspaces import WORKSPACES

    name, bucket = "restorable-sentiment", "dvc-remote"
    remote = f"{s3.create_bucket(bucket)}/dvc"
    repo = tmp_path / "repo"
    repo.mkdir()
    write_csv(repo / "data" / "sample.csv", make_rows(150))
    write_params(repo, tiny_params(tiny_model, sentiment__train__epochs=1, sentiment__registry={"name": name}))
    committed_project(repo, ignored=("/mlflow/",))
    sh("dvc", "remote", "add", "-d", "storage", remote, cwd=repo)
    sh("dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint, cwd=repo)
    commit(repo, "a DVC remote on S3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)  # for the stages' processes and `finetune restore`
    monkeypatch.setattr("pipeline.tracking.USER_TRACKING_URI", tracking_server.url)  # the flow's: read at import
    monkeypatch.chdir(repo)

    decision = retrain(pipeline="sentiment")["sentiment"]
    client = mlflow.MlflowClient(tracking_uri=tracking_server.url)
    version = client.get_model_version(name, decision["challenger"]["version"])
    assert decision["promoted"] and version.tags[REMOTE_TAG] == f"storage {remote}"
    commit_built = version.tags["git_commit"]
    assert commit_built == sh("git", "rev-parse", "HEAD", cwd=repo).strip()
    assert "build/dvc.lock" in {a.path for a in client.list_artifacts(version.run_id, "build")}
    assert s3.keys(bucket, "dvc/files/md5/")  # the outputs, in the bucket

    # A fresh machine: a clone at the version's commit, its own DVC cache, the remote and the tracking server.
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    restored = sh(str(BIN / "finetune"), "restore", "--pipeline", "sentiment", cwd=clone)
    assert f"{name} v{version.version}: at commit {commit_built[:12]}" in restored
    workspace = repo / WORKSPACES / "sentiment"
    for path in ("data/raw/sentiment.jsonl", "data/split/sentiment/train.jsonl", "models/sentiment/model.safetensors",
                 "metrics/sentiment.json", "reports/sentiment/promotion.json"):
        assert (clone / path).read_bytes() == (workspace / path).read_bytes(), path
    assert stages_run(sh("dvc", "repro", "register@sentiment", cwd=clone)) == {"sources"}  # always runs: it fingerprints the inputs

    # A retrain there (a worker on that machine): its new workspace starts from the build, so nothing is trained again.
    monkeypatch.chdir(clone)
    assert retrain(pipeline="sentiment")["sentiment"]["challenger"]["version"] == version.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # A version whose build is not (all) in a remote, as one a plain `dvc repro` registers: refused in one line, naming why.
    client.delete_model_version_tag(name, version.version, REMOTE_TAG)
    refused = subprocess.run([str(BIN / "finetune"), "restore", "--pipeline", "sentiment"], cwd=clone, capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error: {name} v{version.version} has no build in a DVC remote"), refused.stderr
