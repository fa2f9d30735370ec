"""Content pools (docs/METHODS.md "Content pools") on a small simulation: members recomputed independently in
pandas from the lake's Parquet files (pool_1d, a segment pool, follow_promoting), refresh history
(adds, removes with reasons, added_at carried), idempotent re-runs, a rejected version leaving the
previous one current with a data-quality alert, and a pool added by YAML alone, refreshed by the
content_pools DAG."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml

from tasks.core.config import PlatformConfig, PoolConfig, load_config
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import connect_writer, refresh_views
from tasks.ingest.load import load_dir
from tasks.ops.alerts import read_alerts
from tasks.pools.refresh import (
    candidates_window,
    check_every_pool_current,
    daily_refresh_times,
    end_of_day,
    hourly_refresh_time,
    pools_without_version,
    refresh_pools,
    version_name,
)
from tasks.simulator import simulate
from tests.conftest import write_config
from tests.live import airflow_subprocess_env

pytestmark = pytest.mark.slow
START = dt.date(2026, 1, 1)
DAYS = 12
REFRESH_DAYS = [START + dt.timedelta(days=d) for d in (9, 10, 11)]
BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parent.parent / "dags"


def _read(cfg: PlatformConfig, sql: str, params: list | None = None) -> pd.DataFrame:
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).df()


def _lake(cfg: PlatformConfig, table: str) -> pd.DataFrame:
    return pads.dataset(cfg.lake_dir / table, format="parquet", partitioning="hive").to_table().to_pandas()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """1,500 users x 12 days simulated and loaded, the metrics built, pools refreshed at the end of
    days 10, 11 and 12."""
    tmp = tmp_path_factory.mktemp("pools")
    cfg = load_config(
        write_config(tmp / "recpipe.yaml", tmp / "data", simulator={"users": 1500, "items": 1200, "days": DAYS})
    )
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["build"])
    refresh_pools(cfg, [end_of_day(d) for d in REFRESH_DAYS])
    return cfg


def _expected_members(cfg: PlatformConfig, pool: PoolConfig, as_of: dt.datetime) -> pd.DataFrame:
    """The pool at `as_of`, recomputed from the lake: candidates by publish time and expiry,
    the target segment's counts (demographic segments from the users table), the empirical-Bayes
    smoothed rate, the floor and min-rate filters, the best max_size."""
    items = _lake(cfg, "items")
    events = _lake(cfg, "events")
    users = _lake(cfg, "users")
    start = as_of - dt.timedelta(hours=pool.window_hours)
    cand = items[(items.publish_ts >= start) & (items.publish_ts < as_of)].copy()
    ev = events[(events.ts < as_of) & events.item_id.isin(cand.item_id)]
    rows = []
    for segment in pool.segments or ("all",):
        seg_ev = ev
        if segment != "all":
            spec = next(s for s in cfg.segments if s.name == segment)
            assert spec.kind == "demographic", "this check recomputes demographic segments only"
            members = users[
                users.gender.isin(spec.gender or users.gender.unique())
                & users.age_bucket.isin(spec.age_bucket or users.age_bucket.unique())
                & users.city_tier.isin(spec.city_tier or users.city_tier.unique())
            ].user_id
            seg_ev = ev[ev.user_id.isin(members)]
        counts = pd.crosstab(seg_ev.item_id, seg_ev.event_type).reindex(cand.item_id, fill_value=0)
        counts = counts.reindex(columns=list(dict.fromkeys(["impression", "click", pool.score.action])), fill_value=0)
        x = counts[pool.score.action].to_numpy(float)
        n = counts[pool.score.per].to_numpy(float)
        prior = x.sum() / n.sum() if n.sum() else 0.0
        m = pool.score.prior_weight
        with np.errstate(invalid="ignore", divide="ignore"):
            score = (x + m * prior) / (n + m)
        df = pd.DataFrame(
            {"segment": segment, "item_id": cand.item_id.to_numpy(), "score": score,
             "impressions": counts["impression"].to_numpy()}
        )
        expire = cand.expire_ts.to_numpy()
        ok = (df.impressions >= pool.score.min_impressions) & (df.score >= pool.filters.min_rate)
        if pool.filters.exclude_expired:
            ok &= ~(pd.notna(expire) & (expire <= np.datetime64(as_of)))
        df = df[ok.to_numpy() & np.isfinite(score)]
        df = df.sort_values(["score", "impressions", "item_id"], ascending=[False, False, True]).head(pool.max_size)
        df["rank"] = np.arange(1, len(df) + 1)
        rows.append(df)
    return pd.concat(rows)[["segment", "item_id", "score", "rank"]].reset_index(drop=True)


@pytest.mark.parametrize("name", ["pool_1d", "female_18_24_pool", "follow_promoting"])
def test_members_match_an_independent_computation(built: PlatformConfig, name: str) -> None:
    cfg = built
    pool = cfg.pool(name)
    for day in REFRESH_DAYS:
        as_of = end_of_day(day)
        expected = _expected_members(cfg, pool, as_of)
        got = _read(
            cfg,
            "select segment, item_id, score, rank from pool_members where pool = ? and version = ? order by segment, rank",
            [name, version_name(as_of)],
        )
        assert len(expected) > 0, f"{name} at {as_of}: the check needs a non-empty pool"
        assert got[["segment", "item_id"]].to_dict("records") == expected[["segment", "item_id"]].to_dict("records")
        np.testing.assert_allclose(got.score, expected.score, rtol=0, atol=1e-9)
        assert got["rank"].tolist() == expected["rank"].tolist()


def test_every_configured_pool_is_published_and_current(built: PlatformConfig) -> None:
    cfg = built
    current = _read(cfg, "select pool, version from pool_current order by pool")
    daily_and_hourly = sorted(p.name for p in cfg.pools)
    assert current.pool.tolist() == daily_and_hourly
    assert set(current.version) == {version_name(end_of_day(REFRESH_DAYS[-1]))}
    versions = _read(cfg, "select pool, status, count(*) as n from pool_versions group by all")
    assert (versions.status == "published").all() and (versions.n == len(REFRESH_DAYS)).all()
    sizes = _read(cfg, "select pool, segment, count(*) as n from pool_current_members group by all")
    for pool in cfg.pools:
        got = sizes[sizes.pool == pool.name]
        assert set(got.segment) <= set(pool.segments or ["all"])
        assert (got.n <= pool.max_size).all()


def test_history_records_adds_and_removes_with_reasons(built: PlatformConfig) -> None:
    cfg = built
    for before, after in zip(REFRESH_DAYS, REFRESH_DAYS[1:]):
        old_v, new_v = version_name(end_of_day(before)), version_name(end_of_day(after))
        for pool in cfg.pools:
            members = _read(
                cfg,
                "select version, segment, item_id, added_at from pool_members where pool = ? and version in (?, ?)",
                [pool.name, old_v, new_v],
            )
            old = set(map(tuple, members[members.version == old_v][["segment", "item_id"]].to_numpy()))
            new = set(map(tuple, members[members.version == new_v][["segment", "item_id"]].to_numpy()))
            history = _read(
                cfg, "select segment, item_id, change, reason from pool_history where pool = ? and version = ?",
                [pool.name, new_v],
            )
            adds = set(map(tuple, history[history.change == "add"][["segment", "item_id"]].to_numpy()))
            removes = set(map(tuple, history[history.change == "remove"][["segment", "item_id"]].to_numpy()))
            assert adds == new - old and removes == old - new, pool.name
            # Items that stayed keep the time they were first added.
            both = members[members.set_index(["segment", "item_id"]).index.isin(list(old & new))]
            assert (both.groupby(["segment", "item_id"]).added_at.nunique() == 1).all(), pool.name

    # Reasons agree with the items' own facts.
    items = _lake(cfg, "items").set_index("item_id")
    removed = _read(cfg, "select pool, as_of, item_id, reason from pool_history where change = 'remove'")
    assert len(removed) > 0 and set(removed.reason) <= {"aged_out", "expired", "below_impressions_floor", "below_min_rate", "outranked"}
    for r in removed.itertuples():
        start = r.as_of - pd.Timedelta(hours=cfg.pool(r.pool).window_hours)
        aged = items.publish_ts[r.item_id] < start
        assert (r.reason == "aged_out") == aged, r
        if r.reason == "expired":
            assert items.expire_ts[r.item_id] <= r.as_of
    assert "aged_out" in set(removed.reason)


def test_refreshing_again_changes_nothing(built: PlatformConfig) -> None:
    cfg = built
    sql = {
        "pool_members": "select * from pool_members order by all",
        "pool_history": "select * from pool_history order by all",
        "pool_versions": "select * exclude (created_at) from pool_versions order by all",
        "pool_current": "select * exclude (published_at) from pool_current order by all",
    }
    before = {t: _read(cfg, q) for t, q in sql.items()}
    refresh_pools(cfg, [end_of_day(REFRESH_DAYS[-1])])
    for t, q in sql.items():
        pd.testing.assert_frame_equal(_read(cfg, q), before[t], obj=t)


def test_a_failing_version_is_rejected_and_the_previous_stays_current(built: PlatformConfig, tmp_path: Path) -> None:
    cfg = built
    current = _read(cfg, "select version from pool_current where pool = 'female_18_24_pool'").version[0]
    raw = cfg.model_dump(mode="json")
    for p in raw["pools"]:
        if p["name"] == "female_18_24_pool":
            p["min_size"] = p["max_size"]  # more members than the segment's eligible items
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    strict = load_config(path)
    later = end_of_day(REFRESH_DAYS[-1] + dt.timedelta(days=1))
    (outcome,) = refresh_pools(strict, [later], ["female_18_24_pool"])
    assert not outcome.published
    assert _read(cfg, "select version from pool_current where pool = 'female_18_24_pool'").version[0] == current
    status = _read(cfg, "select status from pool_versions where pool = 'female_18_24_pool' and version = ?",
                   [version_name(later)])
    assert status.status.tolist() == ["rejected"]
    alert = read_alerts(cfg)[-1]
    assert alert["kind"] == "data_quality" and "female_18_24_pool" in alert["title"]
    assert alert["title"].endswith(f"rejected; version {current} stays current")
    assert any("expect_table_row_count_to_be_between" in f for f in alert["details"]["failed_expectations"])


def test_a_declared_pool_without_a_version_raises_one_alert(built: PlatformConfig) -> None:
    cfg = built
    with connect_writer(cfg) as con:
        saved = con.execute("select * from pool_current where pool = 'pool_6h'").df()
        con.execute("delete from pool_current where pool = 'pool_6h'")
    try:
        before = len(read_alerts(cfg))
        assert pools_without_version(cfg) == ["pool_6h"]
        assert check_every_pool_current(cfg) == ["pool_6h"]
        (alert,) = read_alerts(cfg)[before:]
        assert alert["kind"] == "data_quality" and "pool_6h" in alert["title"]
    finally:
        with connect_writer(cfg) as con:
            con.register("saved", saved)
            con.execute("insert into pool_current select * from saved")


@pytest.fixture(scope="module")
def added_pool_run(
    built: PlatformConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """A new pool, declared only in the YAML, refreshed by the real content_pools DAG (`recpipe pools`)
    after pool_6h lost its version: (the config, the finished command, the folder of its Airflow
    home, migrated with the project's pools by the command's setup; the hourly DAG's run below reuses it)."""
    cfg = built
    tmp = tmp_path_factory.mktemp("pools-dag")
    with connect_writer(cfg) as con:
        con.execute("delete from pool_current where pool = 'pool_6h'")
    raw = cfg.model_dump(mode="json")
    raw["pools"].append(
        {"name": "tier2_comments_7d", "window": "7d", "segments": ["male_18_24_tier2"], "max_size": 40,
         "score": {"action": "comment", "per": "click", "min_impressions": 3, "prior_weight": 10}}
    )
    path = tmp / "added.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = airflow_subprocess_env(tmp / "airflow", path)
    day = REFRESH_DAYS[-1].isoformat()
    done = subprocess.run([str(BIN / "recpipe"), "pools", "--start", day], env=env, capture_output=True,
                          text=True, timeout=900)
    return path, done, tmp


def test_a_pool_added_in_yaml_is_built_by_the_dag(built: PlatformConfig, added_pool_run) -> None:
    """A new pool, declared only in the YAML, refreshed by the real content_pools DAG (`recpipe pools`);
    the daily run also refreshes the hourly pool (pool_6h here has lost its version), so that every
    declared pool is current after it."""
    cfg = built
    path, done, _ = added_pool_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = _read(cfg, "select * from pool_current_members where pool = 'tier2_comments_7d' order by rank")
    expected = _expected_members(load_config(path), load_config(path).pool("tier2_comments_7d"), end_of_day(REFRESH_DAYS[-1]))
    assert len(got) > 0
    assert got.item_id.tolist() == expected.item_id.tolist()
    assert pools_without_version(load_config(path)) == []


def test_a_rejected_pool_fails_at_once_with_one_alert(built: PlatformConfig, added_pool_run, tmp_path: Path) -> None:
    """The hourly content_pools DAG (`airflow dags test`, retries on) with a new pool no version can
    pass: its publish task fails on its first try, not retried; one alert (the gate's) says the
    pool has no previous version; no task or run failure alert repeats it. Its Airflow home is the
    one `recpipe pools` set up above (`airflow db migrate` and the project's pools, what
    `recpipe airflow-setup` does), which ran no content_pools_hourly task."""
    cfg = built
    _, pools_run, home = added_pool_run
    assert pools_run.returncode == 0, pools_run.stdout[-3000:] + pools_run.stderr[-3000:]
    raw = cfg.model_dump(mode="json")
    raw["airflow"]["retries"] = 2
    template = next(p for p in raw["pools"] if p["name"] == "pool_6h")
    raw["pools"].append({**template, "name": "never_enough", "min_size": template["max_size"],
                         "score": {**template["score"], "min_impressions": 10**6}})  # no eligible item
    path = tmp_path / "never.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # A DAG folder holding content_pools' file alone (a link to dags/content_pools.py, which
    # defines content_pools_hourly): `airflow dags test` parses its folder twice, and the other
    # DAGs' files are not under test here.
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "content_pools.py").symlink_to(DAGS / "content_pools.py")
    env = airflow_subprocess_env(home / "airflow", path, AIRFLOW__CORE__DAGS_FOLDER=str(folder))
    before = len(read_alerts(cfg))
    at = end_of_day(REFRESH_DAYS[-1])  # pool_6h's version of that time again: the same content
    run = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", "content_pools_hourly", at.isoformat() + "+00:00",
         "-c", json.dumps({"at": str(at)})],
        env=env, capture_output=True, text=True, timeout=900,
    )
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        tries = dict(db.execute("select task_id, try_number || ' ' || state from task_instance "
                                "where dag_id = 'content_pools_hourly'").fetchall())
    assert tries["publish_never_enough"] == "1 failed", (tries, (run.stdout + run.stderr)[-3000:])
    assert tries["publish_pool_6h"] == "1 success"
    (alert,) = read_alerts(cfg)[before:]
    assert alert["kind"] == "data_quality" and alert["source"] == "content_pools.never_enough"
    assert alert["title"].endswith("rejected; no previous version: the pool has none yet")
    assert pools_without_version(load_config(path)) == ["never_enough"]


def test_refresh_times_of_daily_and_hourly_runs() -> None:
    times = daily_refresh_times({"ds_from": "2026-01-30", "ds": "2026-02-01"})
    assert times == [dt.datetime(2026, 1, 31), dt.datetime(2026, 2, 1), dt.datetime(2026, 2, 2)]
    # what the DAG's dbt group gets: the days whose last hour the refreshes read
    assert candidates_window(times, ["pool_1d"]) == {
        "ds_from": "2026-01-30", "ds": "2026-02-01", "pools": ["pool_1d"],
        "as_of": ["2026-01-31 00:00:00", "2026-02-01 00:00:00", "2026-02-02 00:00:00"],
    }
    end = dt.datetime(2026, 1, 5, 14, 0, 3, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert hourly_refresh_time(None, end) == [dt.datetime(2026, 1, 5, 12)]
    assert hourly_refresh_time("2026-01-05 07:45:00", end) == [dt.datetime(2026, 1, 5, 7)]
    with pytest.raises(ValueError, match="not on the hour"):
        candidates_window([dt.datetime(2026, 1, 5, 7, 30)], ["pool_6h"])
