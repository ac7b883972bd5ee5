"""A PostgreSQL server for tests: a cluster in a temp dir, on 127.0.0.1 only, trust auth, stopped and
removed at the end. Tests and CI run as root, and PostgreSQL refuses to: the server runs as the
`postgres` system user (created when missing)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

USER = "postgres"


@dataclass(frozen=True)
class Postgres:
    port: int

    def create_database(self, name: str) -> str:
        """Create the database `name`; returns its URL, postgresql://postgres@127.0.0.1:PORT/NAME."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        connection.close()
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"


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
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    return ["runuser", "-u", USER, "--", *args]


def run_checked(args: list[str], **kwargs) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@contextmanager
def postgres_cluster(bindir: Path) -> Iterator[Postgres]:
    """A running PostgreSQL server of the binaries in `bindir`, on a free loopback port."""
    # Not pytest's tmp_path: its parents are root-only (0700), and the postgres user must own the cluster.
    base = Path(tempfile.mkdtemp(prefix="pg-"))
    base.chmod(0o755)
    data = base / "pgdata"
    if os.geteuid() == 0:
        as_postgres()  # creates the postgres user when missing
        shutil.chown(base, USER)
    port, started = free_port(), False
    try:
        run_checked(as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-instructions"))
        # Loopback TCP only, and the unix socket inside the cluster's own folder (not /var/run/postgresql).
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
        run_checked(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-o", options, "-w", "-t", "60", "start"))
        started = True
        yield Postgres(port)
    finally:
        if started:
            subprocess.run(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
