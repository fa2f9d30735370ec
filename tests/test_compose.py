"""Static checks of the team deployment (docker-compose.yml, Dockerfile, .env.example): no Docker
engine runs here, so the files are read as Docker would read them and checked against the
installed Airflow (its CLI parser, its config templates) and against each other."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.cli import build_parser
from tests.deploy_files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    LISTEN_PORTS,
    REPO,
    MissingVariable,
    dockerfile_env,
    dockerfile_instructions,
    interpolate,
    load_compose,
    read_env_file,
    service_env,
    variables_used,
)
from tests.test_secrets import scan_text

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
COMMON = COMPOSE["x-airflow-common"]
NON_AIRFLOW = {"postgres", "redis"}
AIRFLOW_SERVICES = sorted(set(SERVICES) - NON_AIRFLOW)
LONG_RUNNING = sorted(set(SERVICES) - {"airflow-init", "airflow-cli"})
DEFAULT_SERVICES = {
    "postgres",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "feeds",
}
PROFILES = {"redis": ["celery"], "airflow-worker": ["celery"], "flower": ["flower"], "airflow-cli": ["debug"]}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|BASIC_AUTH|WEBHOOK", re.IGNORECASE)
CONSTRAINTS = dict(
    line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
)
# Variables compose itself reads from .env (not interpolations of the file).
COMPOSE_BUILTINS = {"COMPOSE_PROFILES"}


@cache
def airflow_parser():  # noqa: ANN201 (argparse parser of the installed Airflow)
    from airflow.cli.cli_parser import get_parser

    return get_parser()


def assert_airflow_command(args: list[str], where: str) -> None:
    """The installed Airflow's CLI accepts `airflow <args>` (sub-command and options)."""
    try:
        airflow_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `airflow {' '.join(args)}` is not a valid Airflow 3 command")


def command_args(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


@cache
def airflow_config_keys() -> set[tuple[str, str]]:
    """(section, key) of every option of Airflow core and of the installed providers."""
    import airflow
    from airflow.providers_manager import ProvidersManager

    template = Path(airflow.__file__).parent / "config_templates" / "config.yml"
    keys = {(s, k) for s, sec in yaml.safe_load(template.read_text()).items() for k in sec["options"]}
    for _provider, sections in ProvidersManager().provider_configs:
        keys |= {(s, k) for s, sec in sections.items() for k in sec.get("options", {})}
    return keys


def all_env_items() -> list[tuple[str, str, str]]:
    """(where, key, value) of every environment entry of the compose file and the Dockerfile."""
    items = [("x-airflow-common", k, v) for k, v in service_env(COMMON).items()]
    items += [(name, k, v) for name, svc in SERVICES.items() for k, v in service_env(svc).items()]
    items += [("Dockerfile", k, v) for k, v in dockerfile_env().items()]
    return items


def bind_mounts() -> dict[str, str]:
    """Source -> container path of the Airflow services' volumes (`./dags` -> `/opt/recpipe/dags`)."""
    out = {}
    for vol in COMMON["volumes"]:
        source, target = vol.split(":")[:2]
        out[source] = target
    return out


# --- the file and the image -------------------------------------------------------------------------


def test_every_airflow_service_runs_the_project_image() -> None:
    assert COMMON["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert (REPO / "Dockerfile").is_file()
    for name in AIRFLOW_SERVICES:
        svc = SERVICES[name]
        assert svc.get("build") == COMMON["build"] and svc.get("image") == COMMON["image"], name
        assert svc.get("user") in {COMMON["user"], "0:0"}, name
    assert SERVICES["postgres"]["image"] == "postgres:16"


def test_dockerfile_matches_constraints() -> None:
    instructions = dockerfile_instructions()
    (base,) = [args for word, args in instructions if word == "FROM"]
    m = re.fullmatch(r"apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>\d+\.\d+)", base)
    assert m, f"FROM {base}: expected apache/airflow:<version>-python<version>"
    assert m["airflow"] == CONSTRAINTS["apache-airflow"], "image and constraints.txt pin different Airflows"
    # constraints.txt was resolved on this interpreter (torch's wheel is per Python version).
    assert m["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"

    installs = [args for word, args in instructions if word == "RUN" and "pip install" in args]
    assert installs and all("-c constraints.txt" in cmd for cmd in installs), installs
    # The image installs the `deploy` extra (what the compose settings need besides the project) and
    # `s3` (a lake and artifacts on object storage, docs/SCALE.md).
    assert any('".[deploy,s3]"' in cmd for cmd in installs)
    # Editable: tasks.core.dbt_runner and tasks.orchestration.local_airflow resolve dbt/ and dags/ beside tasks/.
    assert all(' -e ".' in cmd for cmd in installs if '".[' in cmd), installs
    deploy = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deploy"]
    needed = {"psycopg2-binary", "asyncpg", "apache-airflow-providers-fab", "apache-airflow-providers-celery"}
    assert needed <= set(deploy) and needed <= set(CONSTRAINTS), "pin the deploy extra in constraints.txt"
    copied = [args.split()[-2] for word, args in instructions if word == "COPY"]
    assert "constraints.txt" in " ".join(a for w, a in instructions if w == "COPY")
    for pkg in ("tasks/", "models/", "expectations/", "dags/", "dbt/", "config/"):
        assert pkg in copied, f"the Dockerfile does not COPY {pkg}"
    for text in (COMPOSE_FILE.read_text(), (REPO / "Dockerfile").read_text()):
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in text


def test_commands_are_airflow_3_subcommands() -> None:
    for name in AIRFLOW_SERVICES:
        svc = SERVICES[name]
        if name in ("airflow-init", "airflow-cli", "feeds"):  # feeds: test_feeds_service_runs_recpipe_serve
            continue
        assert_airflow_command(command_args(svc["command"]), f"services.{name}.command")
    assert SERVICES["airflow-apiserver"]["command"] == "api-server"
    assert SERVICES["airflow-worker"]["command"] == "celery worker"
    # The CLI service runs whatever follows `docker compose run airflow-cli`.
    assert SERVICES["airflow-cli"]["command"] == ["bash", "-c", "airflow"]


def test_feeds_service_runs_recpipe_serve() -> None:
    feeds = SERVICES["feeds"]
    shell, flag, script = command_args(feeds["command"])
    assert (shell, flag) == ("bash", "-c")  # the entrypoint runs bash as is, anything else as `airflow ...`
    exec_, program, *argv = shlex.split(script)
    assert (exec_, program) == ("exec", "recpipe")
    args = build_parser().parse_args(argv)  # the project's CLI accepts it
    assert args.command == "serve" and args.host == "0.0.0.0"
    published = [p.rsplit(":", 1)[1] for p in feeds["ports"]]
    assert published == [str(args.port)]
    assert f"http://localhost:{args.port}/healthz" in feeds["healthcheck"]["test"]
    # The same image and data volume as the Airflow services, and the platform's settings.
    assert feeds["volumes"] == COMMON["volumes"] and feeds["image"] == COMMON["image"]
    env, common = service_env(feeds), service_env(COMMON)
    for key in ("RECPIPE_CONFIG", "RECPIPE_DATA_DIR", "RECPIPE_SLACK_WEBHOOK_URL"):
        assert env[key] == common[key], key
    assert env["CONNECTION_CHECK_MAX_COUNT"] == "0"  # no wait for the metadata database it does not use
    assert not [k for k in env if k.startswith("AIRFLOW")], "feeds needs no Airflow setting (secrets included)"


def test_healthchecks_are_valid_commands() -> None:
    for name in LONG_RUNNING:
        test = SERVICES[name].get("healthcheck", {}).get("test")
        assert test, f"services.{name} has no healthcheck"
        kind, *rest = test
        args = shlex.split(rest[0]) if kind == "CMD-SHELL" else rest
        if args[0] == "airflow":
            assert_airflow_command(args[1:], f"services.{name}.healthcheck")
        elif args[0] == "celery":
            app = args[args.index("--app") + 1]
            module, _, attr = app.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), f"services.{name}: no Celery app {app}"
    assert "/api/v2/version" in " ".join(SERVICES["airflow-apiserver"]["healthcheck"]["test"])


def test_init_service_migrates_and_creates_pool_and_admin() -> None:
    init = SERVICES["airflow-init"]
    script = init["command"][-1]
    assert "/entrypoint bash /opt/recpipe/scripts/airflow-init.sh" in script
    copies = [args for word, args in dockerfile_instructions() if word == "COPY"]
    assert any(a.endswith("scripts/airflow-init.sh scripts/airflow-init.sh") for a in copies)
    body = (REPO / "scripts" / "airflow-init.sh").read_text()
    assert "recpipe airflow-setup" in body  # migrations + the warehouse pool (tasks/orchestration/local_airflow.py)
    create = re.search(r"^airflow (users create.*?)\n(?!\s)", body, re.MULTILINE | re.DOTALL)
    assert create, "scripts/airflow-init.sh does not create the admin user"
    args = [
        interpolate(
            a, {"AIRFLOW_ADMIN_USERNAME": "u", "AIRFLOW_ADMIN_PASSWORD": "p", "AIRFLOW_ADMIN_EMAIL": "e"}
        )
        for a in shlex.split(create.group(1).replace("\\\n", " "))
    ]
    assert_airflow_command(args, "scripts/airflow-init.sh")
    for var in ("AIRFLOW_ADMIN_USERNAME", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_ADMIN_EMAIL"):
        assert var in service_env(init), f"airflow-init does not pass {var}"


# Options that libraries read from Airflow's config under their own section (not in Airflow's list).
LIBRARY_OPTIONS = {("cosmos", "enable_telemetry")}


def test_env_vars_are_airflow_config_keys() -> None:
    known = airflow_config_keys() | LIBRARY_OPTIONS
    for where, key, _ in all_env_items():
        if key.startswith("AIRFLOW__"):
            section, _, option = key.removeprefix("AIRFLOW__").lower().partition("__")
            assert (section, option) in known, f"{where}: {key} is no Airflow config option"


def test_library_options_are_read_by_the_library() -> None:
    import cosmos.settings

    source = Path(cosmos.settings.__file__).read_text()
    for section, option in LIBRARY_OPTIONS:
        assert f'"{section}", "{option}"' in source, (section, option)


def test_auth_manager_and_executors_are_importable() -> None:
    env = service_env(COMMON)
    module, _, cls = env["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")
    assert hasattr(importlib.import_module(module), cls)
    assert interpolate(env["AIRFLOW__CORE__EXECUTOR"], {}) == "LocalExecutor"  # the default
    from airflow.executors.executor_loader import ExecutorLoader

    for executor in ("LocalExecutor", "CeleryExecutor"):  # the two values of AIRFLOW_EXECUTOR
        module, _, cls = ExecutorLoader.executors[executor].rpartition(".")
        assert hasattr(importlib.import_module(module), cls), executor


# --- paths: mounts, Dockerfile and settings agree ----------------------------------------------------


def test_mounts_agree_with_the_image_and_settings() -> None:
    mounts, common_env, image_env = bind_mounts(), service_env(COMMON), dockerfile_env()
    assert set(mounts) >= {"./dags", "./dbt", "./config", "recpipe-data"}
    for source in ("./dags", "./dbt", "./config"):
        assert (REPO / source).is_dir(), source
    for key, expected in (
        ("AIRFLOW__CORE__DAGS_FOLDER", mounts["./dags"]),
        ("RECPIPE_CONFIG", mounts["./config"] + "/recpipe.yaml"),
        ("RECPIPE_DATA_DIR", mounts["recpipe-data"]),
    ):
        assert common_env[key] == expected, f"compose {key}={common_env[key]}, mounted at {expected}"
        assert image_env[key] == expected, f"Dockerfile ENV {key}={image_env[key]}, mounted at {expected}"
    assert (REPO / "config" / Path(common_env["RECPIPE_CONFIG"]).name).is_file()

    # Every mount target exists in the image (copied or created there, under WORKDIR).
    instructions = dockerfile_instructions()
    (workdir,) = [a for w, a in instructions if w == "WORKDIR"]
    made = {f"{workdir}/{a.split()[-1].rstrip('/')}" for w, a in instructions if w == "COPY"}
    made |= {
        p for w, a in instructions if w == "RUN" and "mkdir" in a for p in a.split() if p.startswith("/")
    }
    for source in ("./dags", "./dbt", "./config", "recpipe-data"):
        assert mounts[source] in made, f"{mounts[source]} (mount of {source}) is not in the image"

    named = {src for src in mounts if not src.startswith(".")}
    for svc in SERVICES.values():
        named |= {v.split(":")[0] for v in svc.get("volumes", []) if not v.startswith(".")}
    assert named <= set(COMPOSE["volumes"]), "a named volume is not declared under volumes:"


# --- .env, secrets and profiles -----------------------------------------------------------------------


def test_every_variable_is_in_env_example() -> None:
    used = variables_used(COMPOSE_FILE.read_text())
    listed = set(read_env_file(ENV_EXAMPLE))
    assert used <= listed, f"not in .env.example: {sorted(used - listed)}"
    assert listed - used <= COMPOSE_BUILTINS, (
        f"in .env.example but unused: {sorted(listed - used - COMPOSE_BUILTINS)}"
    )
    assert not re.search(r"(?<!\$)\$[A-Za-z_]", COMPOSE_FILE.read_text()), "use ${VAR} (or $$VAR in scripts)"


def test_env_example_holds_no_secrets_and_secrets_are_required() -> None:
    example = read_env_file(ENV_EXAMPLE)
    for key, value in example.items():
        if SECRET_KEY.search(key):
            assert value == "", f".env.example: {key} must be an empty placeholder"
    # With the placeholders alone, compose refuses to start: the required secrets are missing.
    with pytest.raises(MissingVariable):
        for _, _, value in all_env_items():
            interpolate(value, example)
    for var in (
        "POSTGRES_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
    ):
        assert f"${{{var}:?" in COMPOSE_FILE.read_text(), f"{var} is not required (${{{var}:?...}})"


def test_no_literal_credentials() -> None:
    assert scan_text(COMPOSE_FILE.read_text()) == []
    for where, key, value in all_env_items():
        if SECRET_KEY.search(key):
            assert re.fullmatch(r"\$\{[A-Z_]+(:[-?][^}]*)?\}", value), f"{where}: {key} must come from .env"
        for userinfo in re.findall(r"://([^@/\s]*)@", value):
            _, _, password = userinfo.partition(":")
            assert not password or password.startswith("${"), f"{where}: {key} has a literal password"
    assert "admin:admin" not in COMPOSE_FILE.read_text()


def test_celery_services_only_start_with_their_profile() -> None:
    for name, svc in SERVICES.items():
        assert svc.get("profiles") == PROFILES.get(name), f"services.{name}.profiles"
    default = {name for name, svc in SERVICES.items() if not svc.get("profiles")}
    assert default == DEFAULT_SERVICES
    for name in default:
        for dep, spec in (SERVICES[name].get("depends_on") or {}).items():
            assert dep in default or spec.get("required") is False, (
                f"{name} needs {dep}, which only starts with profile {SERVICES[dep].get('profiles')}"
            )
    assert service_env(COMMON)["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    for name in ("airflow-worker", "flower"):
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_celery_profile_settings() -> None:
    """With AIRFLOW_EXECUTOR=CeleryExecutor in .env every Airflow service runs with the same executor,
    broker, result backend and execution API. tests/test_celery_workers.py runs these very settings
    natively; besides hosts and folders it sets only the ports of LISTEN_PORTS, which compose leaves
    at their defaults."""
    env = {k: v or f"test-{k.lower()}" for k, v in read_env_file(ENV_EXAMPLE).items()}
    env["AIRFLOW_EXECUTOR"] = "CeleryExecutor"
    resolved = {
        name: {k: interpolate(v, env) for k, v in service_env(SERVICES[name]).items()}
        for name in AIRFLOW_SERVICES
        if name != "feeds"
    }
    worker = resolved["airflow-worker"]
    sections = ("AIRFLOW__CORE__", "AIRFLOW__CELERY__", "AIRFLOW__DATABASE__")
    shared = [k for k in service_env(COMMON) if k.startswith(sections)]
    for name, settings in resolved.items():
        for key in shared:
            assert settings[key] == worker[key], f"services.{name}: {key}"
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Celery's results go to the metadata database, with the driver the deploy extra installs.
    assert worker["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + worker["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert worker["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    api_port = SERVICES["airflow-apiserver"]["ports"][0].rsplit(":", 1)[1]
    assert worker["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-apiserver:{api_port}/execution/"
    assert worker["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"  # one task per worker: scale with workers
    for service, key in LISTEN_PORTS.items():
        section, _, option = key.removeprefix("AIRFLOW__").lower().partition("__")
        assert (section, option) in airflow_config_keys() and key not in resolved[service], key


def test_startup_order() -> None:
    for name in AIRFLOW_SERVICES:
        deps = SERVICES[name].get("depends_on") or {}
        assert deps.get("postgres", {}).get("condition") == "service_healthy", name
        if name not in ("airflow-init", "airflow-cli"):
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])


def test_interpolation_with_a_filled_env() -> None:
    env = {k: v or f"test-{k.lower()}" for k, v in read_env_file(ENV_EXAMPLE).items()}
    resolved = {key: interpolate(value, env) for _, key, value in all_env_items()}
    db_url = f"postgresql+psycopg2://airflow:{env['POSTGRES_PASSWORD']}@postgres/airflow"
    assert resolved["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == db_url
    assert resolved["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert interpolate("$${HOSTNAME}", env) == "${HOSTNAME}"
