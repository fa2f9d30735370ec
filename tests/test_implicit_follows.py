"""Implicit follows (docs/METHODS.md "Implicit follows" U2A2I) on a simulation: the dbt model checked against an
independent pandas computation from the lake's Parquet files, implicit follows outnumbering
explicit ones, their next-day click lift over random authors (measured), the GX gate, and the
implicit_follows DAG run with dag.test()."""

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
from tasks.core.warehouse import refresh_views
from tasks.ingest.load import load_dir
from tasks.ops.alerts import read_alerts
from tasks.orchestration.local_airflow import run_dag_for_days, setup_metadata
from tasks.reports.fragments import CHART, embedded_specs
from tasks.reports.social import social_section
from tasks.simulator import simulate
from tasks.social import implicit_follows
from tests.conftest import write_config

pytestmark = pytest.mark.slow
DAYS = 30
START = dt.date(2026, 1, 1)
LAST = START + dt.timedelta(days=DAYS - 1)
SIMULATOR = {"users": 3000, "items": 2000, "days": DAYS}
RANDOM_AUTHORS = 20  # random authors drawn per implicit pair for the baseline


def _lake(cfg: PlatformConfig, table: str, columns: list[str]) -> pd.DataFrame:
    df = pads.dataset(cfg.lake_dir / table, format="parquet", partitioning="hive").to_table(
        columns=[*columns, "dt"]
    ).to_pandas()
    df["day"] = pd.to_datetime(df.pop("dt").astype(str)).dt.date
    return df


def _pairs(cfg: PlatformConfig) -> pd.DataFrame:
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        df = con.execute("select * from implicit_follows order by day, user_id, rank").df()
    df["day"] = df.day.dt.date
    return df


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlatformConfig, dt.date, dt.date]]:
    """Simulated, loaded, staging views; implicit_follows for every day whose window is full and
    whose next day landed, in one dbt run."""
    tmp = tmp_path_factory.mktemp("implicit")
    cfg_path = write_config(tmp / "recpipe.yaml", tmp / "data", simulator=SIMULATOR)
    cfg = load_config(cfg_path)
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["run", "--select", "path:models/staging"])
    first = START + dt.timedelta(days=cfg.implicit_follows.window_days - 1)
    last = LAST - dt.timedelta(days=1)
    implicit_follows.build(cfg, first.isoformat(), last.isoformat())
    with pytest.MonkeyPatch.context() as mp:  # the DAG test parses the DAG with this config
        mp.setenv("RECPIPE_CONFIG", str(cfg_path))
        mp.delenv("RECPIPE_DATA_DIR", raising=False)
        yield cfg, first, last


@pytest.fixture(scope="module")
def lake(built) -> dict[str, pd.DataFrame]:
    cfg, _, _ = built
    items = _lake(cfg, "items", ["item_id", "author_id"]).drop(columns="day")
    events = _lake(cfg, "events", ["user_id", "item_id", "event_type", "dwell_ms"])
    events = events[events.event_type.isin(["impression", "click", "like"])].merge(items, on="item_id")
    follows = _lake(cfg, "follows", ["user_id", "author_id", "ts", "action"])
    return {"events": events, "follows": follows}


def _followed(follows: pd.DataFrame, day: dt.date) -> set[tuple[int, int]]:
    """Explicit edges at the end of `day`: replay the actions in time order (unfollow last on a tie)."""
    state: dict[tuple[int, int], str] = {}
    upto = follows[follows.day <= day].sort_values(["ts", "action"])
    for user, author, action in zip(upto.user_id, upto.author_id, upto.action):
        state[(user, author)] = action
    return {pair for pair, action in state.items() if action == "follow"}


def _expected(cfg: PlatformConfig, lake: dict[str, pd.DataFrame], day: dt.date) -> pd.DataFrame:
    s = cfg.implicit_follows
    ev = lake["events"]
    ev = ev[(ev.day > day - dt.timedelta(days=s.window_days)) & (ev.day <= day) & (ev.user_id != ev.author_id)]
    clicks = ev[ev.event_type == "click"]
    g = pd.DataFrame(
        {
            "clicks": clicks.groupby(["user_id", "author_id"]).size(),
            "dwell_minutes": clicks.groupby(["user_id", "author_id"]).dwell_ms.sum() / 60_000,
            "likes": ev[ev.event_type == "like"].groupby(["user_id", "author_id"]).size(),
        }
    ).fillna(0).reset_index()
    followed = _followed(lake["follows"], day)
    g = g[(g.clicks >= s.min_clicks) & ~pd.Series([p in followed for p in zip(g.user_id, g.author_id)], index=g.index)]
    w = s.weights
    g["affinity"] = w.click * g.clicks + w.dwell_minute * g.dwell_minutes + w.like * g.likes
    g = g.sort_values(["user_id", "affinity", "clicks", "author_id"], ascending=[True, False, False, True])
    g["rank"] = g.groupby("user_id").cumcount() + 1
    g = g[g["rank"] <= s.top_n].assign(day=day)
    return g[["day", "user_id", "author_id", "clicks", "dwell_minutes", "likes", "affinity", "rank"]].reset_index(drop=True)


def test_affinity_matches_an_independent_pandas_computation(built, lake) -> None:
    cfg, first, last = built
    got = _pairs(cfg)
    assert sorted(set(got.day)) == [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    for day in (first, last):
        want = _expected(cfg, lake, day)
        rows = got[got.day == day].reset_index(drop=True)
        assert len(want) > 1000
        pd.testing.assert_frame_equal(rows, want, check_dtype=False, check_exact=False, rtol=1e-9)


def test_implicit_follows_outnumber_explicit_ones(built, lake) -> None:
    cfg, first, last = built
    pairs = _pairs(cfg)
    for day in (first, last):
        implicit, explicit = (pairs.day == day).sum(), len(_followed(lake["follows"], day))
        print(f"\n{day}: {implicit} implicit follow pairs ({pairs[pairs.day == day].user_id.nunique()} users) "
              f"vs {explicit} explicit follow edges")
        assert implicit > 2 * explicit


def test_implicit_follows_predict_next_day_clicks(built, lake) -> None:
    """P(user clicks any item of the author on d+1 | implicit pair on d) against the same users
    with authors drawn uniformly from those whose items were shown (impressions) on d+1, not the
    user, RANDOM_AUTHORS per pair; over every built day."""
    cfg, first, last = built
    pairs = _pairs(cfg)
    ev = lake["events"]
    clicked = set(zip(ev.user_id[ev.event_type == "click"], ev.author_id[ev.event_type == "click"],
                      ev.day[ev.event_type == "click"]))
    shown = ev[ev.event_type == "impression"].groupby("day").author_id.unique()
    rng = np.random.default_rng(0)
    hits, base_hits, base_n = [], 0, 0
    for day, group in pairs.groupby("day"):
        nxt = day + dt.timedelta(days=1)
        hits += [(u, a, nxt) in clicked for u, a in zip(group.user_id, group.author_id)]
        authors = shown[nxt]
        for user in group.user_id:
            drawn = rng.choice(authors, RANDOM_AUTHORS)
            drawn = drawn[drawn != user]
            base_hits += sum((user, a, nxt) in clicked for a in drawn)
            base_n += len(drawn)
    p_implicit, p_random = np.mean(hits), base_hits / base_n
    print(f"\nnext-day click on the author, {first}..{last}: implicit pairs {p_implicit:.4f} "
          f"({len(hits)} pairs), random shown authors {p_random:.4f} ({base_n} draws), "
          f"lift {p_implicit / p_random:.1f}x")
    assert p_implicit >= 3 * p_random


def test_the_gx_suite_passes_and_catches_an_explicit_follow(built, lake) -> None:
    cfg, first, last = built
    summaries = implicit_follows.validate_days(cfg, first.isoformat(), last.isoformat())
    assert [s["day"] for s in summaries][-1] == last.isoformat()
    assert all(s["pairs"] > s["explicit_edges"] for s in summaries)
    day_pairs = _pairs(cfg).query("day == @last").reset_index(drop=True)
    user, author = sorted(_followed(lake["follows"], last))[0]
    bad = pd.concat(
        [day_pairs, day_pairs.head(1).assign(user_id=user, author_id=author, rank=cfg.implicit_follows.top_n + 1)],
        ignore_index=True,
    )
    with pytest.raises(implicit_follows.ImplicitFollowsRejected, match="in_set"):
        implicit_follows.check_day(cfg, bad, lake["follows"].rename(columns={"day": "dt"}), last)
    alert = read_alerts(cfg)[-1]
    assert alert["kind"] == "data_quality" and str(last) in alert["title"]
    failed = " ".join(alert["details"]["failed_expectations"])
    assert "explicitly_followed" in failed and "rank" in failed


def test_without_ds_the_model_fails_clearly(built) -> None:
    cfg, _, _ = built
    with pytest.raises(DbtError, match="implicit_follows needs run value ds"):
        run_dbt(cfg, ["run", "--select", "implicit_follows"])


def test_the_dag_rebuilds_a_day_and_changes_nothing(built) -> None:
    cfg, _, last = built
    before = _pairs(cfg)
    setup_metadata(cfg)
    run_dag_for_days("implicit_follows", [last])
    pd.testing.assert_frame_equal(_pairs(cfg), before)


def test_the_report_section_shows_implicit_vs_explicit(built, lake) -> None:
    cfg, _, last = built
    page = social_section(cfg)
    pairs = _pairs(cfg).query("day == @last")
    explicit = len(_followed(lake["follows"], last))
    assert f"{len(pairs)} implicit pairs for {pairs.user_id.nunique()} users vs {explicit} explicit" in page
    per_user, edges = embedded_specs(page)  # implicit follows per user; implicit vs explicit edges per day
    assert page.count(CHART) == 2 and "KOL scores: not built yet" in page
    assert sum(b["count"] for b in per_user["data"]["values"]) == pairs.user_id.nunique()
    last_day = {v["series"]: v["value"] for v in edges["data"]["values"] if v["day"].startswith(f"{last}")}
    assert last_day == {"implicit (user, author) pairs": len(pairs), "explicit follow edges": explicit}
