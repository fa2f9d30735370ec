"""The dbt metric marts on a small simulation, checked against an independent pandas computation
from the lake's Parquet files (docs/METHODS.md "Metrics"), plus incremental runs: a day rebuilt again changes
nothing, and days built out of order (single days and ranges) give the tables of a full build."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from tasks.core.config import PlatformConfig, load_config
from tasks.core.dbt_runner import DbtError, dbt_state_dir, run_dbt, run_window
from tasks.core.warehouse import refresh_views
from tasks.ingest.load import load_dir
from tasks.simulator import simulate
from tests.conftest import write_config

pytestmark = pytest.mark.slow
DAYS = 10
START = dt.date(2026, 1, 1)
GAP = START + dt.timedelta(days=4)  # its events are not delivered: a day without activity
MARTS = ("metrics_daily", "retention_daily", "ab_readout")
KEYS = {
    "metrics_daily": ["day", "segment", "experiment_bucket"],
    "retention_daily": ["day", "segment", "experiment_bucket"],
    "ab_readout": ["day", "metric", "experiment_bucket"],
}


def _marts(cfg: PlatformConfig) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        return {t: con.sql(f"select * from {t}").df().sort_values(KEYS[t]).reset_index(drop=True) for t in MARTS}


def _lake(cfg: PlatformConfig, table: str, columns: list[str]) -> pd.DataFrame:
    data = pads.dataset(cfg.lake_dir / table, format="parquet", partitioning="hive")
    df = data.to_table(columns=[*columns, "dt"]).to_pandas()
    df["day"] = pd.to_datetime(df.pop("dt").astype(str)).dt.date
    return df


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlatformConfig, dict[str, pd.DataFrame]]:
    """600 users x 10 days simulated, loaded without the GAP day's events, and one full `dbt build`
    (tests included)."""
    tmp = tmp_path_factory.mktemp("dbt-metrics")
    cfg = load_config(write_config(tmp / "recpipe.yaml", tmp / "data", simulator={"users": 600, "days": DAYS}))
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    for events in (cfg.landing_dir / f"dt={GAP.isoformat()}").glob("events.*"):
        events.unlink()
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["build"])
    return cfg, _marts(cfg)


@pytest.fixture(scope="module")
def expected(built) -> dict[str, pd.DataFrame]:
    """The metrics recomputed in pandas from the lake: per user-day activity, the slices each
    user-day is in, then metrics and retention per (day, segment, experiment_bucket)."""
    cfg, _ = built
    events = _lake(cfg, "events", ["user_id", "event_type", "experiment_bucket"])
    users = _lake(cfg, "users", ["user_id", "signup_ts", "gender", "age_bucket", "city_tier"])
    users["signup_day"] = users.signup_ts.dt.date
    counts = pd.crosstab([events.user_id, events.day], events.event_type)
    act = counts.reindex(columns=["impression", "click", "publish"], fill_value=0).reset_index()
    act = act.merge(events.groupby(["user_id", "day"]).experiment_bucket.min().reset_index())
    act = act.merge(users[["user_id", "signup_day", "gender", "age_bucket", "city_tier"]])
    active = set(zip(act.user_id, act.day))
    last = max(d for _, d in active)

    def days_active(u: int, d: dt.date, offsets: range) -> int:
        return sum((u, d + dt.timedelta(days=k)) in active for k in offsets)

    act["prior_14"] = [days_active(u, d, range(-14, 0)) for u, d in zip(act.user_id, act.day)]
    act["lt7"] = [days_active(u, d, range(7)) for u, d in zip(act.user_id, act.day)]
    act["lt30"] = [days_active(u, d, range(30)) for u, d in zip(act.user_id, act.day)]
    act["next"] = [days_active(u, d, range(1, 2)) for u, d in zip(act.user_id, act.day)]
    age = pd.Series([(d - s).days for d, s in zip(act.day, act.signup_day)])
    member = {
        "new_users": age <= 7,
        "low_activity": act.prior_14 <= 3,
        "female_18_24": (act.gender == "f") & (act.age_bucket == "18-24"),
        "male_18_24_tier2": (act.gender == "m") & (act.age_bucket == "18-24") & (act.city_tier == 2),
    }
    assert sorted(member) == sorted(s.name for s in cfg.segments)
    slices = [act.assign(segment="all", slice_bucket="all"), act.assign(segment="all", slice_bucket=act.experiment_bucket)]
    slices += [act[mask.values].assign(segment=name, slice_bucket="all") for name, mask in member.items()]
    rows = pd.concat(slices).rename(columns={"slice_bucket": "bucket"})
    rows["is_new"] = rows.day == rows.signup_day
    g = rows.groupby(["day", "segment", "bucket"])
    out = pd.DataFrame(
        {
            "dau": g.size(),
            "new_users": g.is_new.sum(),
            "ctr": g.click.sum() / g.impression.sum(),
            "penetration_rate": g.publish.apply(lambda p: (p > 0).mean()),
            "next_day_retention": g.next.mean(),
            "lt7": g.lt7.mean(),
            "lt30": g.lt30.mean(),
        }
    ).reset_index()
    out["next_day_complete"] = [d + dt.timedelta(days=1) <= last for d in out.day]
    out["lt7_complete"] = [d + dt.timedelta(days=6) <= last for d in out.day]
    out["lt30_complete"] = [d + dt.timedelta(days=29) <= last for d in out.day]
    # Every day from the first to the last day of events has an ('all', 'all') and a (segment, 'all')
    # row; where no one was active: dau 0, no rates, no retention row (a left merge gives NaN).
    first = min(d for _, d in active)
    spine = pd.MultiIndex.from_product(
        [[first + dt.timedelta(days=i) for i in range((last - first).days + 1)], ["all", *member], ["all"]],
        names=["day", "segment", "bucket"],
    )
    out = out.set_index(["day", "segment", "bucket"])
    out = out.reindex(out.index.union(spine)).reset_index()
    out[["dau", "new_users"]] = out[["dau", "new_users"]].fillna(0)
    return {"slices": out.rename(columns={"bucket": "experiment_bucket"}), "user_days": act}


def test_metrics_match_an_independent_pandas_computation(built, expected) -> None:
    cfg, marts = built
    want = expected["slices"].sort_values(KEYS["metrics_daily"]).reset_index(drop=True)
    got = marts["metrics_daily"].merge(marts["retention_daily"], on=KEYS["metrics_daily"], how="left")
    got["day"] = got.day.dt.date
    got = got.sort_values(KEYS["metrics_daily"]).reset_index(drop=True)
    assert set(got.segment) == {"all", *(s.name for s in cfg.segments)}
    assert set(got.experiment_bucket) == {"all", *cfg.simulator.experiment_buckets}
    assert len(got.day.unique()) == DAYS and set(got.day[got.dau == 0]) == {GAP}
    gap = got[got.day == GAP]
    assert sorted(gap.segment) == sorted(["all", *(s.name for s in cfg.segments)])
    assert (gap.experiment_bucket == "all").all() and gap.ctr.isna().all() and gap.penetration_rate.isna().all()
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    assert want.lt7_complete.any() and not want.lt7_complete.all() and not want.lt30_complete.any()


def test_ab_readout_against_control(built, expected) -> None:
    cfg, marts = built
    ab, act = marts["ab_readout"], expected["user_days"]
    control, other = cfg.simulator.experiment_buckets[:2]
    day = START + dt.timedelta(days=2)
    assert set(ab.experiment_bucket) == set(cfg.simulator.experiment_buckets[1:])
    assert set(ab.metric) >= {"dau", "ctr", "lt7", "next_day_retention", "penetration_rate", "follow_rate"}
    row = ab[(ab.day.dt.date == day) & (ab.experiment_bucket == other)].set_index("metric")

    # LT7, a mean over active users: the difference of means, se of two independent means.
    lt7 = {b: act[(act.day == day) & (act.experiment_bucket == b)].lt7 for b in (control, other)}
    assert row.loc["lt7", "diff"] == pytest.approx(lt7[other].mean() - lt7[control].mean())
    se = np.sqrt(sum(x.var(ddof=1) / len(x) for x in lt7.values()))
    assert row.loc["lt7", "se_diff"] == pytest.approx(se)
    assert row.loc["lt7", "ci_low"] == pytest.approx(row.loc["lt7", "diff"] - 1.959964 * se)
    assert bool(row.loc["lt7", "is_complete"]) and not bool(row.loc["lt30", "is_complete"])

    # CTR, a ratio: delta method = variance of the linearised per-user values (c - R i) / mean(i).
    def ctr_var(b: str) -> tuple[float, float]:
        u = act[(act.day == day) & (act.experiment_bucket == b)]
        r = u.click.sum() / u.impression.sum()
        return r, ((u.click - r * u.impression) / u.impression.mean()).var(ddof=1) / len(u)

    (r_c, v_c), (r_b, v_b) = ctr_var(control), ctr_var(other)
    assert row.loc["ctr", "control_value"] == pytest.approx(r_c)
    assert row.loc["ctr", "bucket_value"] == pytest.approx(r_b)
    assert row.loc["ctr", "se_diff"] == pytest.approx(np.sqrt(v_c + v_b))

    # DAU per assigned user: active on the day / users of the bucket seen so far.
    seen = act[act.day <= day].groupby("user_id").experiment_bucket.first()
    for bucket, col in ((control, "control_value"), (other, "bucket_value")):
        dau = ((act.day == day) & (act.experiment_bucket == bucket)).sum()
        assert row.loc["dau", col] == pytest.approx(dau / (seen == bucket).sum())
    assert row.loc["dau", "n_bucket"] == (seen == other).sum()
    assert (ab.ci_low <= ab["diff"]).all() and (ab["diff"] <= ab.ci_high).all()


def test_rebuilding_a_day_changes_nothing(built) -> None:
    cfg, before = built
    run_dbt(cfg, ["build"], ds=(START + dt.timedelta(days=4)).isoformat())  # with data and unit tests
    after = _marts(cfg)
    for table in MARTS:
        assert not after[table].duplicated(KEYS[table]).any()
        pd.testing.assert_frame_equal(after[table], before[table])


def test_a_run_for_another_day_keeps_dbts_parse_state(built) -> None:
    """The run's window is not a dbt var (it reaches dbt in the environment), so runs for different
    days keep dbt's saved parse state: dbt logs a partial parse, never the full re-parse that a
    change of --vars forces."""
    cfg, _ = built
    log = dbt_state_dir(cfg) / "logs" / "dbt.log"
    for day in (START + dt.timedelta(days=5), START + dt.timedelta(days=6)):
        start = log.stat().st_size if log.exists() else 0
        run_dbt(cfg, ["run", "--select", "stg_events"], ds=day.isoformat())
        with log.open(encoding="utf-8", errors="replace") as f:
            f.seek(start)
            logged = f.read()
        assert "Partial parsing enabled" in logged and "Unable to do partial parsing" not in logged, day


def _same_lake_new_warehouse(cfg: PlatformConfig, warehouse: Path) -> PlatformConfig:
    raw = cfg.model_dump(mode="json")
    raw["paths"] = {**raw["paths"], "data_root": str(cfg.data_root), "warehouse": str(warehouse)}
    return PlatformConfig.model_validate(raw)


def test_out_of_order_backfill_equals_the_full_build(built, tmp_path: Path) -> None:
    cfg, full = built
    other = _same_lake_new_warehouse(cfg, tmp_path / "backfill.duckdb")
    refresh_views(other)
    day = [(START + dt.timedelta(days=i)).isoformat() for i in range(DAYS)]
    for first, last in ((6, 6), (0, 2), (9, 9), (7, 8), (3, 5)):  # single days and ranges
        run_dbt(other, ["run"], ds=day[last], ds_from=day[first])
    backfilled = _marts(other)
    for table in MARTS:
        pd.testing.assert_frame_equal(backfilled[table], full[table], check_exact=False, rtol=1e-9)


def test_bad_days_and_dbt_failures_raise(built, tmp_path: Path) -> None:
    cfg, _ = built
    with pytest.raises(ValueError):
        run_dbt(cfg, ["run"], ds="2026-01-32")
    with pytest.raises(ValueError, match="after"):
        run_dbt(cfg, ["run"], ds="2026-01-02", ds_from="2026-01-05")
    with pytest.raises(ValueError, match="needs ds"):
        run_window(cfg, ds_from="2026-01-02")
    empty = _same_lake_new_warehouse(cfg, tmp_path / "no-views.duckdb")  # no raw views
    with pytest.raises(DbtError, match="raw.events"):
        run_dbt(empty, ["run", "--select", "stg_events", "int_user_day_activity"])
