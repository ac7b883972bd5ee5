"""An MLflow tracking server for tests: `mlflow server` on a free loopback port, its artifacts proxied into a
folder or a bucket of the S3-compatible endpoint (tests/s3.py), stopped with everything it started when the
block ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.postgres import free_port
from tests.processes import stop_group

MLFLOW = Path(sys.executable).parent / "mlflow"


def wait_for_health(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Return once the server answers /health; fail the test with its log when it exits or times out first."""
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


@contextmanager
def mlflow_server(backend_uri: str, artifacts: str, folder: Path, s3_endpoint: str | None = None) -> Iterator[str]:
    """`mlflow server --backend-store-uri BACKEND --artifacts-destination ARTIFACTS` (a folder, or an s3:// URL
    on the S3-compatible endpoint), run in `folder` (its log there); yields its URL."""
    log = folder / "mlflow-server.log"
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner: not needed here
    if s3_endpoint:  # S3 itself needs none: boto3 finds AWS from the credentials
        env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts,
             "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the end reaches its workers too
        )
    try:
        wait_for_health(url, server, log)
        yield url
    finally:
        stop_group(server)
