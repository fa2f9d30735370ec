"""Bringing years of one's own logs (README "Bringing years of your own logs"), end to end as a user
would: a 2.5-year dump made here (few users, one to three events a day, gap days, one date-only
timestamp) loaded with `recpipe load`, compacted, the metrics backfilled with `recpipe metrics`
(the real Airflow `dags test` path, its dbt models in one `dbt build` task). DAU per day is
checked against pandas on the dump itself."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tasks.core.config import PlatformConfig, load_config
from tasks.core.lake import LAKE_TABLES, compact
from tests.conftest import write_config

pytestmark = pytest.mark.slow
FIRST = dt.date(2011, 1, 1)
DAYS = 913  # 2.5 years
LAST = FIRST + dt.timedelta(days=DAYS - 1)
USERS = 8
QUIET_DAYS = {FIRST + dt.timedelta(days=d) for d in range(400, 405)}  # five days in a row without events
DATE_ONLY_ROW = 3  # the data row of events.csv whose ts is a date without a time of day (2011-01-02)
DATE_ONLY_MESSAGE = '"2011-01-02" is a date without a time of day, not a TIMESTAMP (YYYY-MM-DD HH:MM:SS)'


def write_dump(folder: Path) -> Path:
    """users.csv, items.csv, events.csv: USERS users from the first day, an item a month, one to
    three session starts a day, none on QUIET_DAYS and on every 7th day."""
    folder.mkdir(parents=True)
    days = [FIRST + dt.timedelta(days=i) for i in range(DAYS)]
    (folder / "users.csv").write_text(
        "user_id,signup_ts,gender,age_bucket,city_tier,country\n"
        + "".join(f"{u},{FIRST} 0{u}:00:00,u,unknown,0,\n" for u in range(1, USERS + 1))
    )
    months = [d for d in days if d.day == 1]
    (folder / "items.csv").write_text(
        "item_id,author_id,category_l1,category_l2,content_cluster,publish_ts\n"
        + "".join(f"{100 + i},1,books,books/novels,0,{d} 10:00:00\n" for i, d in enumerate(months))
    )
    rows = []
    for i, d in enumerate(days):
        if d in QUIET_DAYS or (i % 7 == 6 and d != LAST):
            continue
        for k in range(1 + i % 3):
            user = (i * 3 + k * 5) % USERS + 1
            ts = f"{d}" if len(rows) + 1 == DATE_ONLY_ROW else f"{d} {10 + k}:00:00"
            rows.append(f"{len(rows) + 1},{ts},{user},{i * 10 + k},,session_start,,control\n")
    header = "event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket\n"
    (folder / "events.csv").write_text(header + "".join(rows))
    return folder


def expected_dau(dump: Path) -> pd.Series:
    """DAU per day from the dump: a valid ts is a date-time; every day from the first to the last
    day with an event, 0 where no one was active."""
    events = pd.read_csv(dump / "events.csv")
    events["ts"] = pd.to_datetime(events.ts, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    events = events.dropna(subset=["ts"])
    dau = events.groupby(events.ts.dt.date).user_id.nunique()
    first, last = dau.index.min(), dau.index.max()
    return dau.reindex([first + dt.timedelta(days=i) for i in range((last - first).days + 1)], fill_value=0)


def recpipe(*args: str, config: Path) -> None:
    """Run the recpipe command as a user would (its exit status checked)."""
    subprocess.run(
        [str(Path(sys.executable).parent / "recpipe"), *args],
        check=True,
        env={**os.environ, "RECPIPE_CONFIG": str(config)},
        timeout=600,
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlatformConfig, Path]:
    """The dump loaded, compacted and backfilled, with the config it ran under."""
    tmp = tmp_path_factory.mktemp("history")
    # One `dbt build` task for the metrics (as config/demo.yaml): the backfill's dbt models and
    # tests are the same, without a dbt start per model (the per-model tasks are
    # tests/test_dag_integrity.py's and the content_pools run of tests/test_pools.py's).
    config = write_config(tmp / "recpipe.yaml", tmp / "data",
                          airflow={"start_date": FIRST.isoformat(), "dbt_tasks": "per_dag"})
    cfg = load_config(config)
    dump = write_dump(tmp / "export")
    recpipe("load", str(dump), config=config)
    compact(cfg.lake_dir, LAST)
    recpipe("metrics", "--start", FIRST.isoformat(), "--end", LAST.isoformat(), config=config)
    return cfg, dump


def test_dau_of_every_day_including_days_without_activity(history) -> None:
    cfg, dump = history
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        got = con.sql(
            "select day, dau from metrics_daily where segment = 'all' and experiment_bucket = 'all' order by day"
        ).df()
    want = expected_dau(dump)
    assert len(want) == DAYS and (want == 0).sum() > len(QUIET_DAYS)
    assert list(got.day.dt.date) == list(want.index)
    assert list(got.dau) == list(want)


def test_the_date_only_timestamp_is_quarantined_with_its_reason(history) -> None:
    cfg, dump = history
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        rows = con.sql("select table_name, row_number, field, reason, message from raw.quarantine").fetchall()
    assert rows == [
        (
            "events",
            DATE_ONLY_ROW,
            "ts",
            "wrong_type",
            f"{(dump / 'events.csv').resolve()} row {DATE_ONLY_ROW}, field ts: " + DATE_ONLY_MESSAGE,
        )
    ]


def test_the_lake_has_a_file_per_table_and_month(history) -> None:
    cfg, _ = history
    files = list(cfg.lake_dir.glob("*/*/*.parquet"))
    months = (LAST.year - FIRST.year) * 12 + LAST.month - FIRST.month + 1
    assert len(files) <= len(LAKE_TABLES) * months + LAST.day  # the open month: a file per day of events
    assert len(list((cfg.lake_dir / "events").glob("month=*/*.parquet"))) == months - 1
