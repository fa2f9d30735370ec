"""Helpers of the tests that run real servers (PostgreSQL, Airflow, Chromium): free ports, system
tools, the environment of an Airflow subprocess, JSON over HTTP, and bounded waits that fail saying
what was awaited."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.orchestration.local_airflow import airflow_env

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_system_tool(found: bool, what: str) -> None:
    """Fail naming the missing system tool and how to get it (`make test` installs it first)."""
    if not found:
        pytest.fail(f"{what} is not installed: run `make system-deps` (scripts/install-system-deps.sh)")


def airflow_subprocess_env(home: Path, config: Path, **settings: str) -> dict[str, str]:
    """The environment of an `airflow` or `recpipe` subprocess with an Airflow home and a config of its
    own: this process's, minus its AIRFLOW_* and RECPIPE_* settings, plus the local Airflow's
    (`airflow_env`), the venv's bin first on PATH, RECPIPE_CONFIG, then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECPIPE"))}
    return env | airflow_env(home) | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                                      "RECPIPE_CONFIG": str(config)} | settings


def request_json(
    url: str, data: dict | None = None, token: str | None = None, method: str | None = None
) -> tuple[int, Any]:
    """(status, JSON body or None) of a GET, or of a JSON POST when data is given (or `method`: PATCH)."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    body = json.dumps(data).encode() if data else None
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 1.0,
    context: Callable[[], str] = str,
) -> Any:
    """Poll check() until it returns something truthy and return that; fail naming what was
    awaited (with context()) after timeout_s. Connection errors count as 'not yet'."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except OSError:
            pass
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{context()}")


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a server started with start_new_session=True and every process of its group: SIGTERM,
    then SIGKILL for whatever is still running after timeout_s."""

    def group_alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group has exited already (a server that died)
        proc.wait()
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so that only live members keep the group
        if not group_alive():
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
