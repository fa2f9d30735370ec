"""KOL scoring (docs/METHODS.md "KOL scoring") on a simulation with planted KOLs: dbt kol_features checked against an
independent pandas computation from the lake's Parquet files, the planted KOLs recovered by the
empirical-Bayes score (ground truth read here only), re-runs idempotent, the GX gate, and the
kol_scoring DAG run with dag.test()."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from tasks.core.config import PlatformConfig, load_config
from tasks.core.dbt_runner import DbtError, run_dbt
from tasks.core.warehouse import connect_writer, refresh_views
from tasks.ingest.load import load_dir
from tasks.ops.alerts import read_alerts
from tasks.orchestration.local_airflow import run_dag_for_days, setup_metadata
from tasks.reports.fragments import CHART
from tasks.reports.social import social_section
from tasks.simulator import read_ground_truth, simulate
from tasks.social import kol
from tests.charts import assert_valid_charts
from tests.conftest import write_config

pytestmark = pytest.mark.slow
DAYS = 30
START = dt.date(2026, 1, 1)
LAST = START + dt.timedelta(days=DAYS - 1)
RANGE = (LAST - dt.timedelta(days=2), LAST)  # built and scored in one run each
EARLY = START + dt.timedelta(days=3)  # a window reaching back before the first day of data
# 3,000 users over 30 days; kol_share 0.03 plants about 90 KOLs.
SIMULATOR = {"users": 3000, "items": 2000, "days": DAYS, "kol_share": 0.03}


def _scores(cfg: PlatformConfig, day: dt.date) -> pd.DataFrame:
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        return con.execute("select * from kol_scores where day = ? order by user_id", [day]).df()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformConfig]:
    """Simulated, loaded, staging views, kol_features for RANGE (one dbt run) and EARLY, scored."""
    tmp = tmp_path_factory.mktemp("kol")
    cfg_path = write_config(tmp / "recpipe.yaml", tmp / "data", simulator=SIMULATOR)
    cfg = load_config(cfg_path)
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["run", "--select", "path:models/staging"])
    kol.build_features(cfg, RANGE[0].isoformat(), RANGE[1].isoformat())
    kol.build_features(cfg, EARLY.isoformat(), EARLY.isoformat())
    kol.score_days(cfg, RANGE[0].isoformat(), RANGE[1].isoformat())
    with pytest.MonkeyPatch.context() as mp:  # the DAG test parses the DAG with this config
        mp.setenv("RECPIPE_CONFIG", str(cfg_path))
        mp.delenv("RECPIPE_DATA_DIR", raising=False)
        yield cfg


@pytest.fixture(scope="module")
def lake_events(built: PlatformConfig) -> pd.DataFrame:
    data = pads.dataset(built.lake_dir / "events", format="parquet", partitioning="hive")
    events = data.to_table(
        columns=["user_id", "event_type", "referrer_user_id", "dt"],
        filter=pads.field("event_type").isin(["share", "offsite_visit"]),
    ).to_pandas()
    events["day"] = pd.to_datetime(events.pop("dt").astype(str)).dt.date
    return events


def _expected_features(events: pd.DataFrame, day: dt.date, window: int) -> pd.DataFrame:
    """Shares by the user and offsite visits naming the user as referrer, in [day - window + 1, day]."""
    inside = events[(events.day > day - dt.timedelta(days=window)) & (events.day <= day)]
    shares = inside[inside.event_type == "share"].groupby("user_id").size().rename("shares")
    visits = (
        inside[inside.event_type == "offsite_visit"].groupby("referrer_user_id").size().rename("visits")
    )
    visits.index = visits.index.astype("int64")
    out = pd.concat([shares, visits], axis=1).fillna(0).astype("int64").rename_axis("user_id").reset_index()
    out["visits_per_share"] = out.visits / out.shares.replace(0, np.nan)
    return out.sort_values("user_id").reset_index(drop=True)


def test_features_match_an_independent_pandas_computation(built, lake_events) -> None:
    with duckdb.connect(str(built.warehouse_path), read_only=True) as con:
        got = con.execute("select * from kol_features order by day, user_id").df()
    assert sorted(set(got.day.dt.date)) == [EARLY, *(RANGE[0] + dt.timedelta(days=i) for i in range(3))]
    for day, rows in got.groupby(got.day.dt.date):
        want = _expected_features(lake_events, day, built.kol.window_days)
        pd.testing.assert_frame_equal(
            rows.drop(columns="day").reset_index(drop=True), want, check_dtype=False, check_exact=False
        )
    assert got.visits.sum() > 0 and (got.shares == 0).sum() < len(got)


def test_planted_kols_are_recovered(built, lake_events) -> None:
    """precision@K with K = the number of planted KOLs who shared in the window (the others, e.g.
    KOLs who signed up late, left no trace to find them by; ground truth read here only)."""
    truth = read_ground_truth(built.ground_truth_dir, "users")
    planted = set(truth.user_id[truth.is_kol])
    window = lake_events[lake_events.day > LAST - dt.timedelta(days=built.kol.window_days)]
    sharers = set(window.user_id[window.event_type == "share"])
    scores = _scores(built, LAST)
    k = len(planted & sharers)
    top = scores.nlargest(k, "kol_score")
    precision = top.user_id.isin(planted).mean()
    flagged = scores[scores.is_kol]
    print(
        f"\nKOL recovery on {LAST}: planted {len(planted)}, of whom {k} shared in the "
        f"{built.kol.window_days}-day window; precision@{k} = {precision:.3f}; is_kol flags {len(flagged)} users, "
        f"{flagged.user_id.isin(planted).mean():.3f} of them planted"
    )
    assert k >= 30, "too few planted KOLs for a meaningful precision"
    assert precision >= 0.9
    assert len(flagged) > 0 and flagged.user_id.isin(planted).mean() >= 0.9


def test_smoothing_ranks_a_long_record_above_one_lucky_share(built) -> None:
    day = _scores(built, LAST)[["day", "user_id", "shares", "visits", "visits_per_share"]]
    lucky = pd.DataFrame({"day": LAST, "user_id": [-1, -2], "shares": [1, 100], "visits": [5, 2000]})
    scored, prior = kol.score(pd.concat([day, lucky], ignore_index=True), built.kol.kol_percentile)
    one, hundred = scored.set_index("user_id").loc[[-1, -2], "kol_score"]
    assert prior.shape > 0 and prior.rate > 0
    population = prior.shape / prior.rate
    assert hundred > one
    assert min(5, population) < one < max(5, population)  # one share's 5 visits pulled towards the population


def test_method_of_moments_recovers_a_known_gamma_prior() -> None:
    rng = np.random.default_rng(7)
    shares = rng.integers(1, 30, 20_000)
    rates = rng.gamma(shape=2.0, scale=1 / 0.5, size=shares.size)  # mean 4, variance 8
    prior = kol.fit_prior(shares, rng.poisson(shares * rates))
    assert prior.shape == pytest.approx(2.0, rel=0.1) and prior.rate == pytest.approx(0.5, rel=0.1)
    # No over-dispersion: a near-certain prior at the pooled rate; no visits at all: scores 0.
    flat = kol.fit_prior(shares, rng.poisson(shares * 3.0))
    assert flat.shape / flat.rate == pytest.approx(3.0, rel=0.02) and flat.shape > 1e3
    assert kol.fit_prior(shares, np.zeros_like(shares)) == kol.GammaPrior(0.0, 1.0)


def test_rebuilding_and_rescoring_a_day_changes_nothing(built) -> None:
    before = _scores(built, LAST)
    kol.build_features(built, LAST.isoformat(), LAST.isoformat())
    kol.score_day(built, LAST)
    after = _scores(built, LAST)
    assert not after.user_id.duplicated().any()
    pd.testing.assert_frame_equal(after, before)


def test_a_failing_suite_alerts_and_writes_nothing(built) -> None:
    before = _scores(built, LAST)
    broken = before.head(5)
    broken = pd.concat([broken, broken.head(1)], ignore_index=True)  # a user scored twice
    broken.loc[0, "percentile"] = 1.5
    with connect_writer(built) as con, pytest.raises(kol.KolScoresRejected, match="to_be_unique"):
        kol.publish_scores(built, con, LAST, broken)
    alert = read_alerts(built)[-1]
    assert alert["kind"] == "data_quality" and str(LAST) in alert["title"]
    assert any("percentile" in f for f in alert["details"]["failed_expectations"])
    pd.testing.assert_frame_equal(_scores(built, LAST), before)


def test_without_ds_the_model_fails_clearly(built) -> None:
    with pytest.raises(DbtError, match="kol_features needs run value ds"):
        run_dbt(built, ["run", "--select", "kol_features"])


def test_the_dag_rebuilds_and_scores_a_day(built) -> None:
    before = _scores(built, RANGE[0])
    setup_metadata(built)
    run_dag_for_days("kol_scoring", [RANGE[0]])
    pd.testing.assert_frame_equal(_scores(built, RANGE[0]), before)


def test_the_report_section_shows_the_kols(built, tmp_path) -> None:
    page = social_section(built)
    scores = _scores(built, LAST)
    best = scores.nlargest(1, "kol_score").user_id.item()
    histogram = assert_valid_charts(page)
    assert page.count(CHART) == len(histogram) == 1 and f"<td>{best}</td>" in page
    positive = scores.kol_score[scores.kol_score > 0]  # log bins: every positive score counted once
    assert sum(b["count"] for b in histogram[0]["data"]["values"]) == len(positive)
    assert f"{int(scores.is_kol.sum())} users flagged is_kol; {len(scores)} scored" in page
    assert "Implicit follows: not built yet" in page
    nothing = load_config(write_config(tmp_path / "recpipe.yaml", tmp_path / "empty"))
    assert "not built yet" in social_section(nothing) and CHART not in social_section(nothing)
