"""Reading the deployment files (docker-compose.yml, Dockerfile, .env.example) the way Docker does,
for the static checks (tests/test_compose.py) and for running the same configuration natively
(tests/test_postgres_metadata.py, tests/test_celery_workers.py)."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
# The port an Airflow service listens on besides its main one (task logs, health check): each
# container has its own, processes on one machine must not share it. A native run of the services
# (tests/test_celery_workers.py) sets these, and only these, to a free port per process.
LISTEN_PORTS = {
    "airflow-worker": "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "airflow-scheduler": "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; `$$` is a literal `$`.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(ValueError):
    """A required ${VAR:?message} variable is unset or empty."""


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as data (YAML anchors and `<<` merge keys resolved)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def variables_used(text: str) -> set[str]:
    """Names of the ${VAR} interpolations of a compose file's text (`$${...}` is not one)."""
    return {m.group(1) for m in _VAR.finditer(text) if m.group(0) != "$$"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Docker Compose variable interpolation of one value."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            return arg if val is None or (op == ":-" and val == "") else val
        if op in (":?", "?") and (val is None or (op == ":?" and val == "")):
            raise MissingVariable(f"{name}: {arg}")
        return val or ""

    return _VAR.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip().removesuffix("\\") + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def dockerfile_env() -> dict[str, str]:
    """The ENV variables the Dockerfile sets (`ENV K=V K2=V2` form)."""
    env: dict[str, str] = {}
    for word, args in dockerfile_instructions():
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` as a mapping (list form `K=V` accepted)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def native_env(
    service: str,
    env_values: dict[str, str],
    host_paths: dict[str, Path],
    db_host: str,
    hosts: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a compose service (or of `x-airflow-common`), for a process on this machine.

    `env_values` plays .env; `host_paths` maps each mount target (container path) to the folder on
    this machine that stands in for it; the `postgres` service is reached at `db_host` (host:port),
    any service named in `hosts` at its address there (`redis` -> `127.0.0.1:6390`: URLs
    `...@redis:6379/` and `http://redis:6379/` point there). Every other setting is taken from the
    compose file as it is.
    """
    compose = load_compose()
    spec = compose[service] if service.startswith("x-") else compose["services"][service]
    env = {k: interpolate(v, env_values) for k, v in service_env(spec).items()}
    addresses = {"postgres": db_host, **(hosts or {})}
    for key, value in env.items():
        for name, address in addresses.items():
            value = re.sub(rf"(?:(?<=@)|(?<=//)){re.escape(name)}(?::\d+)?(?=/)", address, value)
        for target, path in sorted(host_paths.items(), key=lambda kv: -len(kv[0])):
            if value == target or value.startswith(target + "/"):
                value = str(path) + value[len(target) :]
                break
        env[key] = value
    return env


def process_env(service: str, env_values: dict[str, str], stand_ins: dict[str, Path], airflow_home: Path,
                hosts: dict[str, str]) -> dict[str, str]:
    """`native_env` of a compose service on top of this process's environment (minus its AIRFLOW_*
    and RECPIPE_* settings), for a process started here: `stand_ins` maps each mounted source of
    `x-airflow-common` (e.g. "./dags", "recpipe-data") to its folder here, `hosts` each service
    (`postgres` required) to its host:port."""
    mounts = [v.split(":") for v in load_compose()["x-airflow-common"]["volumes"]]
    paths = {target: stand_ins[source] for source, target, *_ in mounts if source in stand_ins}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECPIPE"))}
    base.update(AIRFLOW_HOME=str(airflow_home),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return base | native_env(service, env_values, paths, hosts["postgres"], hosts)


def filled_dotenv(db_user: str, db_password: str, database: str) -> dict[str, str]:
    """A filled-in .env, as a team member writes it from .env.example: the metadata database's
    credentials and fresh secrets."""
    return read_env_file(ENV_EXAMPLE) | {
        "POSTGRES_USER": db_user,
        "POSTGRES_PASSWORD": db_password,
        "POSTGRES_DB": database,
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW_ADMIN_USERNAME": "team-admin",
        "AIRFLOW_ADMIN_EMAIL": "team-admin@example.com",
        # a leading dash, as 1 in 64 of token_urlsafe's have: airflow-init must pass it as --password=...
        "AIRFLOW_ADMIN_PASSWORD": "-" + secrets.token_urlsafe(18),
    }
