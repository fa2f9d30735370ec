"""The deployment's configuration, natively: docker-compose.yml's Airflow settings (PostgreSQL metadata
database, FAB auth manager, secrets from a .env) against a real PostgreSQL server. The init
service's script (migrations, warehouse pool, admin user), then the ingest DAG, whose run is read
back from the PostgreSQL metadata database; and the api-server, which refuses anyone who has not
logged in as a user of the .env."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.deploy_files import REPO, filled_dotenv, process_env
from tests.live import free_port, request_json, stop_process_group, wait_for
from tests.postgres_server import PostgresServer, postgres  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DATABASE = "airflow"


@dataclass(frozen=True)
class Deployment:
    """The compose configuration, initialised on a PostgreSQL server; env builds a service's env."""

    server: PostgresServer
    dotenv: dict[str, str]
    tmp: Path

    def env(self, service: str) -> dict[str, str]:
        """A service's environment from docker-compose.yml, for a process on this machine."""
        stand_ins = {
            "./dags": REPO / "dags",
            "./dbt": REPO / "dbt",
            "./config": self.tmp / "config",
            "recpipe-data": self.tmp / "data",
        }
        return process_env(service, self.dotenv, stand_ins, self.tmp / "airflow",
                           {"postgres": f"{self.server.host}:{self.server.port}"})

    def query(self, sql: str) -> list[tuple]:
        """Rows of a query on the metadata database."""
        con = self.server.connect(DATABASE)
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            con.close()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def deployment(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Deployment:  # noqa: F811
    """A filled-in .env (as a team member writes it from .env.example) and the init service's
    script run twice on it: a restarted deployment re-runs it and nothing changes."""
    postgres.create_database(DATABASE)
    dotenv = filled_dotenv(postgres.user, postgres.password, DATABASE)
    deploy = Deployment(postgres, dotenv, tmp_path_factory.mktemp("deployment"))
    env = deploy.env("airflow-init")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    (deploy.tmp / "config").mkdir()
    write_config(Path(env["RECPIPE_CONFIG"]), Path(env["RECPIPE_DATA_DIR"]))
    for attempt in (1, 2):
        init = _run(["bash", str(REPO / "scripts" / "airflow-init.sh")], env)
        assert init.returncode == 0, f"airflow-init run {attempt}:\n{(init.stdout + init.stderr)[-4000:]}"
    return deploy


def test_init_creates_pool_and_admin_in_postgres(deployment: Deployment) -> None:
    assert deployment.query("select slots from slot_pool where pool = 'warehouse_writer'") == [(1,)]
    admins = deployment.query(
        "select u.username, r.name from ab_user u join ab_user_role ur on ur.user_id = u.id "
        "join ab_role r on r.id = ur.role_id"
    )
    assert admins == [("team-admin", "Admin")]
    assert deployment.query("select count(*) from alembic_version") == [(1,)]
    # Everything went to PostgreSQL, nothing to a SQLite file in AIRFLOW_HOME.
    assert not list((deployment.tmp / "airflow").glob("*.db"))


def test_ingest_dag_run_is_recorded_in_postgres(deployment: Deployment) -> None:
    env = deployment.env("airflow-scheduler")
    run = _run([str(BIN / "airflow"), "dags", "test", "ingest", "2026-01-01"], env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    assert deployment.query("select state from dag_run where dag_id = 'ingest'") == [("success",)]
    states = dict(deployment.query("select task_id, state from task_instance where dag_id = 'ingest'"))
    assert states == dict.fromkeys(("land_batch", "load_batch", "publish_warehouse", "assign_experiments"), "success")
    assert (Path(env["RECPIPE_DATA_DIR"]) / "warehouse.duckdb").exists()


def test_api_server_requires_login_with_the_env_credentials(deployment: Deployment) -> None:
    env, port = deployment.env("airflow-apiserver"), free_port()
    url = f"http://127.0.0.1:{port}"
    log = deployment.tmp / "api-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, f"api-server exited {proc.returncode}\n{log.read_text()[-3000:]}"
            return request_json(f"{url}/api/v2/version")[0] == 200

        wait_for("the api-server", up, 120, context=lambda: log.read_text()[-3000:])
        assert request_json(f"{url}/api/v2/dags")[0] == 401
        for username, password in (
            ("admin", "admin"),
            ("airflow", "airflow"),
            ("team-admin", "not-the-password"),
        ):
            assert request_json(f"{url}/auth/token", {"username": username, "password": password})[0] == 401
        creds = {"username": "team-admin", "password": deployment.dotenv["AIRFLOW_ADMIN_PASSWORD"]}
        status, body = request_json(f"{url}/auth/token", creds)
        assert status in (200, 201), status
        assert request_json(f"{url}/api/v2/dags", token=body["access_token"])[0] == 200
    finally:
        stop_process_group(proc)
