"""End to end: the real `airflow dags test` of the ingest DAG, with a temporary AIRFLOW_HOME,
data dir and warehouse; results checked against the landed files, read independently."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_config
from tests.live import airflow_subprocess_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parent.parent / "dags"


def _dag_folder(tmp: Path) -> Path:
    """A DAG folder holding the ingest DAG's file alone (a link to dags/ingest.py): `airflow dags
    test` parses the folder (twice), and the other DAGs' files are not under test here."""
    folder = tmp / "dags"
    folder.mkdir(exist_ok=True)
    if not (folder / "ingest.py").exists():
        (folder / "ingest.py").symlink_to(DAGS / "ingest.py")
    return folder


def _env(tmp: Path, cfg_path: Path) -> dict[str, str]:
    return airflow_subprocess_env(tmp / "airflow", cfg_path, AIRFLOW__CORE__DAGS_FOLDER=str(_dag_folder(tmp)))


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _dags_test(day: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run([str(BIN / "airflow"), "dags", "test", "ingest", day], env)


def _alerts(data: Path) -> list[dict]:
    path = data / "alerts" / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _raw_counts(data: Path) -> dict[str, int]:
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return {
            t: con.execute(f"select count(*) from raw.{t}").fetchone()[0]
            for t in ("users", "items", "follows", "events", "quarantine")
        }


def _landed_rows(data: Path, table: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (data / "landing").glob(f"dt=*/{table}.parquet"))


@pytest.fixture(scope="module")
def migrated_airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The metadata database of an Airflow home set up once by `recpipe airflow-setup` (migrated,
    the warehouse pool created; the dbt manifest it builds is the repository's): what every
    test's home starts from, so that the migration runs once per module, not once per test."""
    tmp = tmp_path_factory.mktemp("airflow-setup")
    env = _env(tmp, write_config(tmp / "recpipe.yaml", tmp / "data"))
    setup = _run([str(BIN / "recpipe"), "airflow-setup"], env)
    assert setup.returncode == 0, setup.stderr[-3000:]
    return tmp / "airflow" / "airflow.db"


@pytest.fixture
def airflow_platform(tmp_path: Path, migrated_airflow_db: Path):
    """A migrated temporary Airflow home with the warehouse pool (a copy of the module's freshly
    set-up metadata database; Airflow writes the home's airflow.cfg itself), and a small simulator
    config."""

    def make(**overrides: dict) -> tuple[Path, dict[str, str]]:
        data = tmp_path / "data"
        cfg_path = write_config(tmp_path / "recpipe.yaml", data, **overrides)
        env = _env(tmp_path, cfg_path)
        (tmp_path / "airflow").mkdir()
        shutil.copy2(migrated_airflow_db, tmp_path / "airflow" / "airflow.db")
        return data, env

    return make


def test_ingest_dag_simulated_days_land_in_warehouse(airflow_platform) -> None:
    data, env = airflow_platform()
    for day in ("2026-01-01", "2026-01-02"):
        run = _dags_test(day, env)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    counts = _raw_counts(data)
    expected = {t: _landed_rows(data, t) for t in ("users", "items", "follows", "events")}
    assert expected["events"] > 1000
    assert counts == {**expected, "quarantine": 0}
    assert not [a for a in _alerts(data) if a["kind"] == "data_quality"]

    # Re-running a day changes nothing: same rows, no duplicates.
    rerun = _dags_test("2026-01-02", env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _raw_counts(data) == counts
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        dupes = con.execute("select count(*) - count(distinct event_id) from raw.events").fetchone()[0]
    assert dupes == 0


def _write_batch(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text.strip() + "\n")


USERS = """
user_id,signup_ts,gender,age_bucket,city_tier,country
1,2026-01-03 08:00:00,f,18-24,2,DE
2,2026-01-03 09:00:00,m,25-34,1,
3,2026-01-03 10:00:00,u,unknown,0,FR
"""
ITEMS = """
item_id,author_id,category_l1,category_l2,content_cluster,publish_ts,duration_ms,expire_ts
10,3,music,music/pop,7,2026-01-03 10:30:00,15000,
"""
EVENTS = """
event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket,referrer_user_id,position
1,2026-01-03 11:00:00,1,100,,session_start,,control,,
2,2026-01-03 11:00:01,1,100,10,impression,,control,,0
3,2026-01-03 11:00:02,1,100,10,click,5300,control,,0
4,2026-01-03 11:00:03,1,100,10,like,,control,,
5,2026-01-03 11:00:04,1,100,10,teleport,,control,,
6,2026-01-03 11:00:05,2,101,10,click,-40,control,,
7,2026-01-03 11:00:06,99,102,10,click,100,control,,
8,2026-01-03 11:05:00,1,100,,session_end,300000,control,,
"""


def test_landing_batch_with_bad_rows_is_quarantined_and_alerted(airflow_platform) -> None:
    data, env = airflow_platform(ingest={"source": "landing", "quarantine_alert_share": 0.05})
    _write_batch(
        data / "landing" / "dt=2026-01-03",
        {"users.csv": USERS, "items.csv": ITEMS, "events.csv": EVENTS},
    )
    run = _dags_test("2026-01-03", env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    counts = _raw_counts(data)
    assert counts == {"users": 3, "items": 1, "follows": 0, "events": 5, "quarantine": 3}
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        reasons = dict(con.execute("select reason, count(*) from raw.quarantine group by 1").fetchall())
    assert reasons == {"unknown_event_type": 1, "negative_dwell": 1, "unknown_user": 1}
    (alert,) = [a for a in _alerts(data) if a["kind"] == "data_quality"]
    assert alert["severity"] == "warning"


def test_a_rejected_batch_fails_at_once_with_one_alert(airflow_platform) -> None:
    """A batch that cannot be loaded (a required column missing) is a data-quality rejection: the
    task fails without its retry, and the one alert is the loader's, naming the column."""
    data, env = airflow_platform(ingest={"source": "landing"}, airflow={"retries": 2})
    broken = EVENTS.replace("event_type,", "kind,")  # a required column is missing
    _write_batch(data / "landing" / "dt=2026-01-03", {"users.csv": USERS, "items.csv": ITEMS, "events.csv": broken})
    run = _dags_test("2026-01-03", env)
    assert "failed" in (run.stdout + run.stderr).lower()
    (alert,) = _alerts(data)
    assert alert["kind"] == "data_quality" and alert["source"] == "recpipe.load"
    assert "event_type" in alert["details"]["error"]
