"""End to end: the README's main job (`recpipe demo`: ingest DAG runs, then the daily_metrics DAG
with its Cosmos dbt task group) on a small simulation, then a single day rebuilt with the real
`airflow dags test daily_metrics`. DAU and LT7 are recomputed here from the lake's Parquet files."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from tasks.core.days import resolve_days
from tests.conftest import write_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parent.parent / "dags"
DAYS = 8
START = dt.date(2026, 1, 1)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def _tables(warehouse: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            t: con.execute(f"select * from {t} order by all").df()
            for t in ("metrics_daily", "retention_daily", "ab_readout")
        }


def _activity_from_lake(data: Path) -> pd.DataFrame:
    """(user_id, day) pairs with any event (= active, per the contract), straight from the lake's Parquet (not via dbt)."""
    events = ds.dataset(data / "lake" / "events", format="parquet", partitioning="hive").to_table(
        columns=["user_id", "ts"]
    ).to_pandas()
    events["day"] = events.ts.dt.date
    return events[["user_id", "day"]].drop_duplicates()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("metrics-e2e")
    data = tmp / "data"
    cfg_path = write_config(tmp / "recpipe.yaml", data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECPIPE"))}
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__COSMOS__ENABLE_TELEMETRY="False",
        RECPIPE_CONFIG=str(cfg_path),
    )
    run = _run([str(BIN / "recpipe"), "demo", "--days", str(DAYS)], env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    return data, env, run


def test_demo_builds_metrics_that_match_the_lake(demo) -> None:
    data, _, run = demo
    tables = _tables(data / "warehouse.duckdb")
    overall = tables["metrics_daily"].query("segment == 'all' and experiment_bucket == 'all'")
    activity = _activity_from_lake(data)
    expected_dau = activity.groupby("day").user_id.nunique()
    assert list(overall.day.dt.date) == list(expected_dau.index) == [START + dt.timedelta(d) for d in range(DAYS)]
    assert overall.dau.tolist() == expected_dau.tolist()

    # LT7(d) = mean over users active on d of their active days in [d, d+6]; final only once d+6 landed.
    active = set(zip(activity.user_id, activity.day))
    retention = tables["retention_daily"].query("segment == 'all' and experiment_bucket == 'all'").set_index("day")
    for day, users in activity.groupby("day").user_id:
        lt7 = [sum((u, day + dt.timedelta(k)) in active for k in range(7)) for u in users]
        row = retention.loc[pd.Timestamp(day)]
        assert bool(row.lt7_complete) == (day + dt.timedelta(6) <= START + dt.timedelta(DAYS - 1))
        if row.lt7_complete:
            assert row.lt7 == pytest.approx(sum(lt7) / len(lt7))

    assert "DAU" in run.stdout and "report" in run.stdout.lower()
    report = data / "reports" / "metrics" / "index.html"
    assert report.exists() and report.read_text().count("<img") >= 3


def test_rebuilding_one_day_with_dags_test_changes_nothing(demo) -> None:
    data, env, _ = demo
    before = _tables(data / "warehouse.duckdb")
    day = (START + dt.timedelta(days=3)).isoformat()
    run = _run([str(BIN / "airflow"), "dags", "test", "daily_metrics", day], env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    after = _tables(data / "warehouse.duckdb")
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], check_exact=False, rtol=1e-12)


class _Event:
    def __init__(self, day: str) -> None:
        self.extra = {"day": day}


def test_run_days_come_from_params_then_asset_events_then_logical_date() -> None:
    events = {"recpipe_raw_events": [_Event("2026-01-05"), _Event("2026-01-02")]}
    logical = dt.datetime(2026, 1, 9, tzinfo=dt.timezone.utc)
    assert resolve_days({"day": "2026-01-03"}, events, logical) == {"ds_from": "2026-01-03", "ds": "2026-01-03"}
    assert resolve_days({"day": "2026-01-03", "through": "2026-01-06"}, events, logical)["ds"] == "2026-01-06"
    # Coalesced ingest runs: one triggered run rebuilds every announced day.
    assert resolve_days({"day": None}, events, logical) == {"ds_from": "2026-01-02", "ds": "2026-01-05"}
    assert resolve_days({}, {}, logical) == {"ds_from": "2026-01-09", "ds": "2026-01-09"}
    with pytest.raises(ValueError, match="no day"):
        resolve_days({}, {}, None)
    with pytest.raises(ValueError, match="before start"):
        resolve_days({"day": "2026-01-06", "through": "2026-01-03"}, {}, None)
