"""The built-in simulator: contract conformance, determinism, daily mode, and the planted truths.

Planted properties are measured from the contract tables (plus the ground truth where a latent
value is needed), never from the simulator's internals.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.core.config import SimulatorConfig
from tasks.core.contract import AGE_BUCKETS, EVENT_TYPES, GENDERS, ITEM_EVENT_TYPES, TABLES
from tasks.simulator import ExposureContext, read_ground_truth, register_policy, simulate, simulate_day

START = dt.date(2026, 1, 1)
SMALL = SimulatorConfig(users=1_500, items=300, days=4, seed=11, start_date=START)


@register_policy("test_newest")
def _newest(
    ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    return np.full(int(slots.sum()), ctx.item_ids[np.argmax(ctx.item_publish_us)])


@register_policy("test_broken")
def _broken(
    ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    return np.zeros(int(slots.sum()), dtype=np.int64)  # item id 0 does not exist


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger run (20k users, 6 days) for the statistical properties."""
    out = tmp_path_factory.mktemp("sim")
    cfg = SimulatorConfig(kol_share=0.02)
    simulate(cfg, out / "landing", out / "gt", users=20_000, items=2_000, days=6, seed=3, start_date=START)
    return out


@pytest.fixture(scope="module")
def db(run: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in TABLES:
        con.sql(
            f"create view {name} as select * from read_parquet('{run}/landing/*/{name}.parquet', "
            "hive_partitioning = true, hive_types = {'dt': DATE})"
        )
    return con


def _row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    (row,) = con.sql(sql).fetchall()
    return row


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    return _row(con, sql)[0]


def _count(con: duckdb.DuckDBPyConnection, where: str, table: str = "events") -> int:
    return _one(con, f"select count(*) from {table} where {where}")


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, except the state snapshots (zip members carry mtimes)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_state" not in p.parts
    }


# Contract ----------------------------------------------------------------------------------


def test_each_day_is_a_batch_of_the_four_contract_tables(run: Path) -> None:
    days = sorted(p.name for p in (run / "landing").iterdir())
    assert days == [f"dt={START + dt.timedelta(days=i)}" for i in range(6)]
    for day in days:
        files = sorted(p.name for p in (run / "landing" / day).iterdir())
        assert files == sorted(f"{name}.parquet" for name in TABLES)
        for name, table in TABLES.items():
            assert pq.read_schema(run / "landing" / day / f"{name}.parquet").equals(table.arrow_schema())


def test_duckdb_reads_the_contract_types(db: duckdb.DuckDBPyConnection) -> None:
    for name, table in TABLES.items():
        types = dict(db.sql(f"select column_name, column_type from (describe {name})").fetchall())
        assert {c.name: types[c.name] for c in table.columns} == {c.name: c.sql_type for c in table.columns}


def test_values_are_in_their_domains(db: duckdb.DuckDBPyConnection) -> None:
    assert {r[0] for r in db.sql("select distinct gender from users").fetchall()} <= set(GENDERS)
    assert {r[0] for r in db.sql("select distinct age_bucket from users").fetchall()} <= set(AGE_BUCKETS)
    assert _row(db, "select min(city_tier), max(city_tier) from users") == (1, 5)
    assert {r[0] for r in db.sql("select distinct event_type from events").fetchall()} == set(EVENT_TYPES)
    item_types = ", ".join(f"'{t}'" for t in ITEM_EVENT_TYPES)
    assert _count(db, f"event_type in ({item_types}) and item_id is null") == 0
    assert _count(db, "event_type like 'session%' and item_id is not null") == 0
    assert _count(db, "(event_type = 'offsite_visit') <> (referrer_user_id is not null)") == 0
    assert _count(db, "(event_type = 'impression') <> (position is not null)") == 0
    assert _count(db, "(event_type in ('click', 'session_end')) <> (dwell_ms is not null)") == 0
    assert _count(db, "dwell_ms < 0") == 0
    assert _count(db, "duration_ms < 0 or expire_ts <= publish_ts", "items") == 0


def test_timestamps_fall_on_their_batch_day(db: duckdb.DuckDBPyConnection) -> None:
    assert _count(db, "ts::date <> dt") == 0
    assert _count(db, "ts::date <> dt", "follows") == 0
    # Later batches: signups and uploads of that day; the first also holds the earlier base.
    for table, ts in (("users", "signup_ts"), ("items", "publish_ts")):
        assert _count(db, f"{ts}::date > dt", table) == 0
        assert _count(db, f"dt > DATE '{START}' and {ts}::date <> dt", table) == 0
        assert _count(db, f"{ts} < DATE '{START}' - 30", table) > 0
    assert _count(db, f"signup_ts < DATE '{START}'", "users") == 20_000
    assert _count(db, f"publish_ts < DATE '{START}'", "items") == 2_000


def test_every_referenced_id_exists_in_this_or_an_earlier_batch(db: duckdb.DuckDBPyConnection) -> None:
    refs = [
        ("events", "user_id", "users", "user_id"),
        ("events", "referrer_user_id", "users", "user_id"),
        ("events", "item_id", "items", "item_id"),
        ("items", "author_id", "users", "user_id"),
        ("follows", "user_id", "users", "user_id"),
        ("follows", "author_id", "users", "user_id"),
    ]
    for table, col, target, key in refs:
        missing = _one(
            db,
            f"select count(*) from {table} t where t.{col} is not null and not exists "
            f"(select 1 from {target} r where r.{key} = t.{col} and r.dt <= t.dt)",
        )
        assert missing == 0, f"{table}.{col}"
    for table, key in (("users", "user_id"), ("items", "item_id"), ("events", "event_id")):
        assert _one(db, f"select count(*) - count(distinct {key}) from {table}") == 0, table
    # Items are shown only once published; unfollows undo an earlier follow.
    assert _count(db, "e.ts < i.publish_ts", "events e join items i using (item_id)") == 0
    unmatched = _one(
        db,
        "select count(*) from follows u where action = 'unfollow' and not exists (select 1 from follows f "
        "where f.action = 'follow' and f.user_id = u.user_id and f.author_id = u.author_id and f.ts < u.ts)",
    )
    assert unmatched == 0


def test_sessions_are_well_formed(db: duckdb.DuckDBPyConnection) -> None:
    bad = _one(
        db,
        """select count(*) from (
            select session_id, count(distinct user_id) users,
                   count(*) filter (event_type = 'session_start') starts,
                   count(*) filter (event_type = 'session_end') ends,
                   min(ts) filter (event_type = 'session_start') t0,
                   max(ts) filter (event_type = 'session_end') t1,
                   min(ts) lo, max(ts) hi, max(dwell_ms) filter (event_type = 'session_end') len_ms
            from events group by session_id)
        where users <> 1 or starts <> 1 or ends <> 1 or lo < t0 or hi > t1
           or len_ms <> (epoch_us(t1) - epoch_us(t0)) // 1000""",
    )
    assert bad == 0
    # Every follow action is a follow event at the same time, and the reverse.
    follow_rows = "select user_id, ts from follows where action = 'follow'"
    follow_events = "select user_id, ts from events where event_type = 'follow'"
    assert db.sql(f"({follow_rows}) except all ({follow_events})").fetchall() == []
    assert db.sql(f"({follow_events}) except all ({follow_rows})").fetchall() == []


def test_ground_truth_is_kept_apart(run: Path, db: duckdb.DuckDBPyConnection) -> None:
    landing_files = {p.name for p in (run / "landing").rglob("*") if p.is_file()}
    assert landing_files == {f"{name}.parquet" for name in TABLES}
    users = read_ground_truth(run / "gt", "users")
    items = read_ground_truth(run / "gt", "items")
    expected = {"user_id", "is_kol", "is_creator", "activity", "interest_l2", "interest_weight"}
    assert expected <= set(users.columns)
    assert set(items.columns) >= {"item_id", "quality"}
    assert set(users.user_id) == {r[0] for r in db.sql("select user_id from users").fetchall()}
    assert set(items.item_id) == {r[0] for r in db.sql("select item_id from items").fetchall()}
    assert np.allclose(users.interest_weight.map(sum), 1.0, atol=1e-5)
    assert users.interest_weight.map(lambda w: bool(np.all(np.diff(w) <= 0))).all()
    assert (set(users.columns) - {"user_id", "dt"}).isdisjoint(TABLES["users"].column_names)
    assert read_ground_truth(run / "gt", "user_days").groupby("dt").size().min() > 0


# Determinism and the daily mode --------------------------------------------------------------


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        simulate(SMALL, tmp_path / name / "landing", tmp_path / name / "gt", seed=seed)
    a, b, c = (_digests(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["landing/dt=2026-01-02/events.parquet"] != c["landing/dt=2026-01-02/events.parquet"]


def test_daily_mode_matches_one_go_and_reruns_are_identical(tmp_path: Path) -> None:
    simulate(SMALL, tmp_path / "once" / "landing", tmp_path / "once" / "gt")
    daily = tmp_path / "daily"
    days = [START + dt.timedelta(days=i) for i in range(SMALL.days)]
    for day in days:
        summary = simulate_day(SMALL, daily / "landing", daily / "gt", day)
        assert summary.day == day and summary.events > 0
    expected = _digests(tmp_path / "once")
    assert _digests(daily) == expected
    snapshots = sorted(p.name for p in (daily / "gt" / "_state").iterdir())
    assert snapshots == [f"dt={d}.npz" for d in days[-SMALL.state_snapshots_kept :]]

    # Re-running a day (its predecessor's snapshot was pruned: replayed) rewrites identical files.
    simulate_day(SMALL, daily / "landing", daily / "gt", days[1])
    assert _digests(daily) == expected
    # Without any state, a day is rebuilt by replaying from the start; replayed batches are not rewritten.
    shutil.rmtree(daily / "gt" / "_state")
    shutil.rmtree(daily / "landing" / f"dt={days[2]}")
    simulate_day(SMALL, daily / "landing", daily / "gt", days[3])
    assert _digests(daily) == {k: v for k, v in expected.items() if f"landing/dt={days[2]}" not in k}


def test_daily_mode_ignores_state_of_another_config(tmp_path: Path) -> None:
    other = SMALL.model_copy(update={"seed": 99})
    simulate(other, tmp_path / "x" / "landing", tmp_path / "gt", days=2)
    simulate(SMALL, tmp_path / "ref" / "landing", tmp_path / "ref" / "gt", days=2)
    simulate_day(SMALL, tmp_path / "y" / "landing", tmp_path / "gt", START + dt.timedelta(days=1))
    ref = tmp_path / "ref" / "landing" / "dt=2026-01-02" / "events.parquet"
    assert (tmp_path / "y" / "landing" / "dt=2026-01-02" / "events.parquet").read_bytes() == ref.read_bytes()


def test_simulate_day_before_the_start_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before the simulator's start date"):
        simulate_day(SMALL, tmp_path / "l", tmp_path / "g", START - dt.timedelta(days=1))


# Exposure policies ---------------------------------------------------------------------------


def test_exposure_policy_is_pluggable(tmp_path: Path) -> None:
    cfg = SMALL.model_copy(update={"exposure_policy": "test_newest", "days": 2})
    simulate(cfg, tmp_path / "landing", tmp_path / "gt")
    con = duckdb.connect()
    shown = con.sql(
        f"select dt, count(distinct item_id) from read_parquet('{tmp_path}/landing/*/events.parquet', "
        "hive_partitioning = true) where event_type = 'impression' group by dt"
    ).fetchall()
    assert [n for _, n in shown] == [1, 1]


def test_unknown_or_broken_policies_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown exposure policy 'nope'"):
        simulate(SMALL.model_copy(update={"exposure_policy": "nope"}), tmp_path / "l", tmp_path / "g")
    with pytest.raises(ValueError, match="may not be shown"):
        simulate(SMALL.model_copy(update={"exposure_policy": "test_broken"}), tmp_path / "l", tmp_path / "g")


def test_config_rejects_clusters_that_cannot_nest() -> None:
    with pytest.raises(ValueError, match="content_clusters"):
        SimulatorConfig(content_clusters=10)


# Planted properties --------------------------------------------------------------------------


def test_kol_shares_bring_ten_times_the_offsite_visits(run: Path, db: duckdb.DuckDBPyConnection) -> None:
    kol = read_ground_truth(run / "gt", "users")[["user_id", "is_kol"]]
    db.register("kol", kol)
    rows = dict(
        db.sql(
            """with shares as (select user_id, count(*) n from events where event_type = 'share' group by 1),
                    visits as (select referrer_user_id user_id, count(*) n from events
                               where event_type = 'offsite_visit' group by 1)
               select k.is_kol, sum(coalesce(v.n, 0)) / sum(s.n)
               from shares s join kol k using (user_id) left join visits v using (user_id) group by 1"""
        ).fetchall()
    )
    assert rows[True] >= 10 * rows[False] > 0
    # Visitors are existing users who are active that day through the visit's own session.
    assert _count(db, "event_type = 'offsite_visit' and user_id = referrer_user_id") == 0


def test_clicks_concentrate_on_the_top_latent_category(run: Path, db: duckdb.DuckDBPyConnection) -> None:
    users = read_ground_truth(run / "gt", "users")
    db.register("top", users.assign(top=users.interest_l2.str[0])[["user_id", "top"]])
    ctr = dict(
        db.sql(
            """select i.category_l2 = t.top,
                      count(*) filter (event_type = 'click') / count(*) filter (event_type = 'impression')
               from events e join items i using (item_id) join top t using (user_id)
               where event_type in ('impression', 'click') group by 1"""
        ).fetchall()
    )
    assert ctr[True] > 2 * ctr[False]


def test_satisfied_users_come_back_more_often(db: duckdb.DuckDBPyConnection) -> None:
    rates = dict(
        db.sql(
            """with day as (
                   select user_id, dt,
                          count(*) filter (event_type = 'click')
                          / count(*) filter (event_type = 'impression') ctr
                   from events group by all having count(*) filter (event_type = 'impression') > 0),
               active as (select distinct user_id, dt from events),
               scored as (
                   select d.*, d.ctr > median(d.ctr) over (partition by d.dt) high,
                          exists (select 1 from active a where a.user_id = d.user_id and a.dt = d.dt + 1) back
                   from day d where d.dt < (select max(dt) from events))
               select high, avg(back::int) from scored group by 1"""
        ).fetchall()
    )
    assert rates[True] > rates[False] + 0.05


def test_activity_is_plausible(run: Path, db: duckdb.DuckDBPyConnection) -> None:
    dau, base, events = _row(
        db,
        """select avg(dau), avg(base), avg(n) from (
               select dt, count(distinct user_id) dau, count(*) n,
                      (select count(*) from users u where u.dt <= e.dt) base
               from events e group by dt)""",
    )
    assert 0.2 <= dau / base <= 0.5
    assert 2.5 <= events / 20_000 <= 4.5  # about 3.3 events per user and day at the defaults


def test_publishers_are_a_minority(run: Path, db: duckdb.DuckDBPyConnection) -> None:
    users = read_ground_truth(run / "gt", "users")
    assert 0 < users.is_creator.mean() < 0.2
    authors = {r[0] for r in db.sql("select distinct author_id from items").fetchall()}
    assert authors <= set(users.user_id[users.is_creator])
    daily = db.sql(
        """select count(distinct user_id) filter (event_type = 'publish') / count(distinct user_id)
           from events group by dt"""
    ).fetchall()
    assert all(0 < share < 0.2 for (share,) in daily)
    assert _count(db, "event_type = 'publish'") == _count(db, f"publish_ts >= DATE '{START}'", "items")


def test_new_users_arrive_every_day_and_are_active(db: duckdb.DuckDBPyConnection) -> None:
    new = db.sql("select dt, count(*) from users where signup_ts::date = dt group by dt").fetchall()
    assert len(new) == 6 and all(n > 0 for _, n in new)
    inactive = (
        "signup_ts::date = dt and not exists "
        "(select 1 from events e where e.user_id = u.user_id and e.dt = u.dt)"
    )
    assert _count(db, inactive, "users u") == 0
    assert _count(db, "e.ts < u.signup_ts", "events e join users u using (user_id)") == 0


def test_experiment_buckets_are_stable_and_balanced(db: duckdb.DuckDBPyConnection) -> None:
    per_user = "select count(distinct experiment_bucket) n from events group by user_id"
    assert _one(db, f"select max(n) from ({per_user})") == 1
    shares = db.sql(
        "select experiment_bucket, count(distinct user_id) / sum(count(distinct user_id)) over () "
        "from events group by 1"
    ).fetchall()
    assert {b for b, _ in shares} == set(SimulatorConfig().experiment_buckets)
    assert all(abs(s - 1 / 3) < 0.03 for _, s in shares)
