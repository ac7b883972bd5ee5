"""An S3-compatible endpoint for tests: moto's server mode on 127.0.0.1, standing in for S3 (a DVC remote,
an MLflow server's --artifacts-destination). It takes any credentials; the fixture sets dummy ones in the
environment, where boto3 (MLflow) and DVC's s3fs read them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.postgres import free_port
from tests.processes import stop_group

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    server: subprocess.Popen  # moto_server: a test may stop it early, to take the endpoint down

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; returns s3://NAME."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def s3_server(log: Path, timeout: float = 60) -> Iterator[S3]:
    """moto_server on a free loopback port until the block ends."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        server = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"moto_server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer {endpoint} within {timeout:.0f} s") from None
                time.sleep(0.3)
        yield S3(endpoint, server)
    finally:
        stop_group(server)
