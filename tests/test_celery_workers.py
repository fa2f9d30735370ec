"""Airflow on Celery workers, natively, in the compose `celery` profile's configuration (docs/SCALE.md):
Redis as the broker (password, no persistence), PostgreSQL as metadata database and Celery result
backend, the init service's script, then the api-server (whose execution API the workers' tasks
talk to), the scheduler, the dag-processor and two `airflow celery worker` processes, each with
the environment of its compose service (CeleryExecutor set in the .env, as a team sets it); the
DAG folder holds the DAG under test alone. Each worker has a hostname of its own (a UTS namespace,
as each container has), which Airflow records per task. One nightly_training run (ItemCF and
Swing, no ranking group) on the 15-day simulation: its tasks ran on both workers, every one
succeeded, and the tasks of the one-slot warehouse_writer pool never ran at the same time,
whichever worker they were on."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
import redis
import yaml

from tasks.core.config import DEFAULT_CONFIG, load_config
from tasks.core.warehouse import refresh_views
from tasks.orchestration.wiring import WATCHER
from tests.deploy_files import LISTEN_PORTS, REPO, filled_dotenv, interpolate, load_compose, process_env
from tests.live import free_port, request_json, require_system_tool, stop_process_group, wait_for
from tests.postgres_server import PostgresServer, postgres  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DATABASE = "airflow"
DAG_ID = "nightly_training"
# Two models: when the first one's gate passes, its publish (no pool) and the other model's next
# writer task are queued together, so with one task per worker both workers run one.
MODELS = ["itemcf", "swing"]  # two-tower training and the ranking group would only make the run longer
WORKERS = ("recpipe-worker-1", "recpipe-worker-2")
WRITER_POOL = load_config(DEFAULT_CONFIG).airflow.warehouse_pool
RUN_TIMEOUT_S = 600


@dataclass
class Cluster:
    """The deployment's processes on this machine: their logs, and the environment of each service."""

    tmp: Path
    dotenv: dict[str, str]
    hosts: dict[str, str]  # compose service -> host:port here
    procs: dict[str, subprocess.Popen]

    def env(self, service: str) -> dict[str, str]:
        """A compose service's environment for a process here: the repository's folders and tmp's
        DAG, config and data folders stand in for the mounts, `hosts` for the other services, and a
        free port for the one it listens on besides its main one (LISTEN_PORTS)."""
        stand_ins = {
            "./dags": self.tmp / "dags",
            "./plugins": REPO / "plugins",
            "./dbt": REPO / "dbt",
            "./config": self.tmp / "config",
            "recpipe-data": self.tmp / "data",
        }
        ports = {LISTEN_PORTS[service]: str(free_port())} if service in LISTEN_PORTS else {}
        return process_env(service, self.dotenv, stand_ins, self.tmp / "airflow", self.hosts) | ports

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        """Start a process in its own session, its output in <name>.log."""
        with (self.tmp / f"{name}.log").open("w") as out:
            self.procs[name] = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
            )

    def check_running(self) -> None:
        """Fail naming a process that exited, with its log's tail."""
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}\n{self.tail(name)}"

    def tail(self, name: str, chars: int = 3000) -> str:
        return f"--- {name}.log\n{(self.tmp / f'{name}.log').read_text(errors='replace')[-chars:]}"

    def tails(self) -> str:
        """The end of every process's log (the workers', the scheduler's, ...)."""
        return "\n".join(self.tail(name) for name in self.procs)

    def stop(self) -> None:
        """Stop every process (and its children), all at once."""
        with ThreadPoolExecutor(max(len(self.procs), 1)) as pool:
            list(pool.map(stop_process_group, self.procs.values()))


def start_redis(cluster: Cluster) -> None:
    """redis-server on a free port with the .env's password, no persistence, files in tmp."""
    require_system_tool(shutil.which("redis-server") is not None, "redis-server")
    port, folder = free_port(), cluster.tmp / "redis"
    folder.mkdir()
    password = cluster.dotenv["REDIS_PASSWORD"]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
    args += ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    cluster.start("redis", ["redis-server", *args], os.environ.copy())
    cluster.hosts["redis"] = f"127.0.0.1:{port}"
    client = redis.Redis(host="127.0.0.1", port=port, password=password)

    def up() -> bool:
        cluster.check_running()
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_for("redis-server", up, 30, interval_s=0.2, context=cluster.tails)


def uts_namespace(hostname: str) -> list[str]:
    """A command prefix that runs a program under its own hostname, as in a container of its own."""
    require_system_tool(shutil.which("unshare") is not None, "unshare (util-linux)")
    user_ns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user_ns, "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def prepare_data(cluster: Cluster, retrieval_sim: Path) -> dt.date:
    """The DAG folder with the DAG under test alone (the dag-processor parses only it), the 15-day
    simulation copied into the data folder, its config with the test's models; returns the day the
    run evaluates."""
    (cluster.tmp / "dags").mkdir()
    shutil.copy(REPO / "dags" / f"{DAG_ID}.py", cluster.tmp / "dags")
    source = yaml.safe_load(retrieval_sim.read_text())
    shutil.copytree(load_config(retrieval_sim).data_root, cluster.tmp / "data")
    source["paths"]["data_root"] = str(cluster.tmp / "data")
    source["retrieval"]["nightly_models"] = MODELS
    source["ranking"]["nightly"] = False
    path = cluster.tmp / "config" / "recpipe.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(source, sort_keys=False))
    cfg = load_config(path)
    refresh_views(cfg)  # the views over the copied lake
    return cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.days - 2)


def wait_until_ready(cluster: Cluster) -> str:
    """Wait for the workers (their compose healthcheck: a Celery ping under their own hostname), the
    api-server and the DAG, parsed by the dag-processor (then stopped); unpause the DAG (paused at
    creation, as in the deployment). Returns an API token of the .env's admin."""
    check = interpolate(load_compose()["services"]["airflow-worker"]["healthcheck"]["test"][1], {})
    for name in WORKERS:
        env = cluster.env("airflow-worker") | {"HOSTNAME": name}

        def healthy(env: dict[str, str] = env) -> bool:
            cluster.check_running()
            return subprocess.run(["sh", "-c", check], check=False, env=env, capture_output=True).returncode == 0

        wait_for(f"Celery worker {name}", healthy, 180, context=cluster.tails)
    url = f"http://{cluster.hosts['airflow-apiserver']}"

    def up() -> bool:
        cluster.check_running()
        return request_json(f"{url}/api/v2/version")[0] == 200

    wait_for("the api-server", up, 180, context=cluster.tails)
    admin = {key: cluster.dotenv[f"AIRFLOW_ADMIN_{key.upper()}"] for key in ("username", "password")}
    status, body = request_json(f"{url}/auth/token", admin)
    assert status in (200, 201), status
    token, dag_url = body["access_token"], f"{url}/api/v2/dags/{DAG_ID}"

    def parsed() -> bool:
        cluster.check_running()
        return request_json(dag_url, token=token)[0] == 200

    wait_for(f"the dag-processor to parse {DAG_ID}", parsed, 180, context=cluster.tails)
    # Its job is done: parsing the DAG file again every 30 s would only take CPU from the tasks.
    stop_process_group(cluster.procs.pop("dag-processor"))
    assert request_json(dag_url, {"is_paused": False}, token, method="PATCH")[0] == 200
    return token


def run_dag(cluster: Cluster, token: str, day: dt.date) -> str:
    """Trigger one run of the DAG for `day` through the REST API (as the UI's Trigger button does);
    its run id once it succeeded."""
    dag_url = f"http://{cluster.hosts['airflow-apiserver']}/api/v2/dags/{DAG_ID}"
    status, run = request_json(
        f"{dag_url}/dagRuns", {"logical_date": f"{day}T00:00:00Z", "conf": {"day": day.isoformat()}}, token
    )
    assert status == 200, (status, run)
    run_url = f"{dag_url}/dagRuns/{run['dag_run_id']}"

    def report() -> str:
        tis = (request_json(f"{run_url}/taskInstances", token=token)[1] or {}).get("task_instances", [])
        states = "\n".join(f"{t['task_id']}: {t['state']} on {t['hostname']}" for t in tis)
        return f"{states}\n{cluster.tails()}"

    def ended() -> str | None:
        cluster.check_running()
        state = request_json(run_url, token=token)[1]["state"]
        return state if state in ("success", "failed") else None

    state = wait_for(f"the {DAG_ID} run", ended, RUN_TIMEOUT_S, interval_s=2, context=report)
    assert state == "success", f"{DAG_ID} run {state}\n{report()}"
    return run["dag_run_id"]


@pytest.fixture(scope="module")
def task_instances(
    postgres: PostgresServer,  # noqa: F811
    retrieval_sim: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[dict]:
    """The task instances of one nightly_training run on two Celery workers, read from the metadata
    database once every process has been stopped."""
    postgres.create_database(DATABASE)
    dotenv = filled_dotenv(postgres.user, postgres.password, DATABASE) | {
        "AIRFLOW_EXECUTOR": "CeleryExecutor",
        "COMPOSE_PROFILES": "celery",
        "REDIS_PASSWORD": secrets.token_hex(16),
    }
    hosts = {"postgres": f"{postgres.host}:{postgres.port}", "airflow-apiserver": f"127.0.0.1:{free_port()}"}
    cluster = Cluster(tmp_path_factory.mktemp("celery"), dotenv, hosts, {})
    day = prepare_data(cluster, retrieval_sim)
    init = subprocess.run(
        ["bash", str(REPO / "scripts" / "airflow-init.sh")],
        check=False,
        env=cluster.env("airflow-init"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert init.returncode == 0, (init.stdout + init.stderr)[-4000:]
    try:
        start_redis(cluster)
        airflow = str(BIN / "airflow")
        for name in WORKERS:
            cluster.start(name, [*uts_namespace(name), airflow, "celery", "worker"], cluster.env("airflow-worker"))
        host, port = cluster.hosts["airflow-apiserver"].split(":")
        cluster.start("api-server", [airflow, "api-server", "-H", host, "-p", port], cluster.env("airflow-apiserver"))
        cluster.start("scheduler", [airflow, "scheduler"], cluster.env("airflow-scheduler"))
        cluster.start("dag-processor", [airflow, "dag-processor"], cluster.env("airflow-dag-processor"))
        run_id = run_dag(cluster, wait_until_ready(cluster), day)
    finally:
        cluster.stop()
    con = postgres.connect(DATABASE)
    try:
        with con.cursor() as cur:
            cur.execute(
                "select task_id, state, hostname, pool, external_executor_id, start_date, end_date "
                "from task_instance where dag_id = %s and run_id = %s",
                (DAG_ID, run_id),
            )
            columns = [c.name for c in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def test_tasks_of_one_run_ran_on_both_workers_and_succeeded(task_instances: list[dict]) -> None:
    states = {t["task_id"]: t["state"] for t in task_instances}
    steps = ("train", "evaluate", "gate", "publish")
    expected = {"resolve_days", "write_report"} | {f"{m}.{s}" for m in MODELS for s in steps}
    # The watcher only runs when a task failed: skipped.
    assert states == dict.fromkeys(expected, "success") | {WATCHER: "skipped"}
    ran = [t for t in task_instances if t["state"] == "success"]
    assert {t["hostname"] for t in ran} == set(WORKERS)
    assert all(t["external_executor_id"] for t in ran), "every task went through Celery (its Celery task id)"


def test_warehouse_writers_never_overlapped(task_instances: list[dict]) -> None:
    writers = sorted((t for t in task_instances if t["pool"] == WRITER_POOL), key=lambda t: t["start_date"])
    # itemcf.train and swing.train depend on nothing but resolve_days: only the pool keeps them apart.
    assert {"itemcf.train", "swing.train"} <= {t["task_id"] for t in writers}
    for before, after in pairwise(writers):
        assert before["end_date"] <= after["start_date"], f"{before['task_id']} and {after['task_id']} overlapped"
