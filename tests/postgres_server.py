"""A throwaway PostgreSQL server for tests: `initdb` into a temporary folder, started with `pg_ctl` on
a free localhost port with password (scram) authentication, removed afterwards. PostgreSQL
refuses to run as root, so under root the server runs as the `postgres` OS user (runuser).
Needs the Debian package `postgresql` (scripts/install-system-deps.sh)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live import free_port, require_system_tool

SUPERUSER = "recpipe"


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, if any."""
    found = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


@dataclass(frozen=True)
class PostgresServer:
    """A running server: superuser credentials and where to reach it."""

    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):  # noqa: ANN201 (a psycopg2 connection)
        """A psycopg2 connection (autocommit) to a database on this server."""
        import psycopg2

        con = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database
        )
        con.autocommit = True
        return con

    def create_database(self, name: str) -> None:
        """CREATE DATABASE name (owned by the superuser)."""
        con = self.connect()
        try:
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL cluster; stop it and delete its files on exit."""
    bin_dir = postgres_bin_dir()
    require_system_tool(bin_dir is not None, "PostgreSQL (initdb, pg_ctl)")
    assert bin_dir is not None
    as_user: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="recpipe-pg-"))
    password, port = secrets.token_hex(16), free_port()
    data, sock, pwfile = base / "data", base / "sock", base / "pwfile"
    sock.mkdir()
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(base, "postgres")
        for p in (sock, pwfile):
            shutil.chown(p, "postgres")

    def run(*args: str) -> None:
        try:
            subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError as e:
            log = base / "server.log"
            raise RuntimeError(
                f"PostgreSQL failed: {e.cmd}\n{e.stdout}{e.stderr}\n{log.read_text() if log.exists() else ''}"
            ) from e

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale",
            "C",
        )
        pwfile.unlink()
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-o",
            opts,
            "-w",
            "start",
        )
        try:
            yield PostgresServer("127.0.0.1", port, SUPERUSER, password)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the tests of one module."""
    with running_postgres() as server:
        yield server
