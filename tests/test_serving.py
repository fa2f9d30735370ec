"""The recommendation path on a simulated world with every nightly artifact (pools, two-tower,
ItemCF, Swing, full ranker, pre-ranker, ANN indexes): the feeds' invariants checked against the
warehouse and the config, cold start, and fail-open serving when an artifact breaks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import multiprocessing
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expectations.runner import validate_frame
from expectations.serving import feed_expectations
from models.common.tables import Events
from models.ranking.features import ranking_features
from models.ranking.full import predict_proba
from models.ranking.pre import predict as pre_predict
from models.retrieval.retriever import Popularity
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect
from tasks.ops.alerts import read_alerts
from tasks.ranking import special_groups
from tasks.ranking.pre import Context as PreContext
from tasks.ranking.pre import inputs as pre_inputs
from tasks.retrieval import ann_refresh
from tasks.serving import batch, funnel
from tasks.serving.blocks import BLOCK_USERS, feeds_in_blocks
from tasks.serving.context import load_context, seen_matrix
from tasks.serving.funnel import recommend

pytestmark = pytest.mark.slow
SAMPLE_USERS = 150


@pytest.fixture(scope="module")
def feeds(served_world) -> tuple[PlatformConfig, dt.date, pd.DataFrame, pd.DataFrame, list[int]]:
    cfg, day = served_world
    ctx = load_context(cfg, day)
    assert not ctx.broken, ctx.broken
    users = sorted(np.random.default_rng(0).choice(np.unique(ctx.clicks.user_id), SAMPLE_USERS, replace=False))
    out = recommend(ctx, np.array(users))
    return cfg, day, out.rows, out.funnel, users


def _shown_or_clicked(cfg: PlatformConfig, day: dt.date) -> set[tuple[int, int]]:
    """(user, item) pairs the seen filter must exclude, straight from the raw events."""
    s = cfg.serving
    with connect(cfg) as con:
        rows = con.execute(
            """select distinct user_id, item_id from raw.events where item_id is not null and (
                   (event_type = 'impression' and dt between ? and ?) or
                   (event_type = ? and dt between ? and ?))""",
            [day - dt.timedelta(days=s.seen_window_days - 1), day, cfg.retrieval.positive_event,
             day - dt.timedelta(days=cfg.retrieval.train_window_days - 1), day]).fetchall()
    return set(rows)


def _close_pairs(values: list, gap: int) -> int:
    """Pairs of equal values fewer than `gap` + 1 positions apart (brute force)."""
    return sum(values[i] == values[j] for i in range(len(values)) for j in range(i + 1, min(len(values), i + gap + 1)))


def test_feeds_hold_every_invariant(feeds) -> None:
    cfg, day, rows, _, users = feeds
    s = cfg.serving.strategy(cfg.serving.default_strategy)
    assert set(rows.user_id) == set(users)
    assert (rows.groupby("user_id").size() == s.feed_length).all()
    assert not rows.duplicated(["user_id", "item_id"]).any()
    assert all(sorted(g) == list(range(s.feed_length)) for _, g in rows.groupby("user_id").position)
    seen = _shown_or_clicked(cfg, day)
    assert not any((u, i) in seen for u, i in zip(rows.user_id, rows.item_id))
    with connect(cfg) as con:
        items = con.execute("""select item_id, category_l2, content_cluster, expire_ts from raw.items
                               qualify row_number() over (partition by item_id order by dt desc) = 1""").df()
    items = items.set_index("item_id")
    served_at = pd.Timestamp(day + dt.timedelta(days=1))
    assert not (items.loc[rows.item_id].expire_ts <= served_at).any()
    relaxed = 0
    for _, feed in rows.sort_values(["user_id", "position"]).groupby("user_id"):
        ranked = feed[feed.decision != "exploration"]
        relaxed += int((ranked.decision == "ranked, spacing relaxed").sum())
        cats = list(items.loc[ranked.item_id].category_l2)
        clusters = list(items.loc[ranked.item_id].content_cluster)
        if not (ranked.decision == "ranked, spacing relaxed").any():
            assert _close_pairs(cats, s.diversity.category_gap) == 0
            assert _close_pairs(clusters, s.diversity.cluster_gap) == 0
    assert relaxed <= 0.01 * len(rows)  # the rules are relaxed only where no candidate fits


def test_every_channel_stays_within_its_quota(feeds) -> None:
    cfg, _, _, funnel, _ = feeds
    s = cfg.serving.strategy(cfg.serving.default_strategy)
    ctx_segments = load_context(cfg, feeds[1]).segments
    for _, row in funnel.iterrows():
        segs = ctx_segments.get(int(row.user_id), ())
        for name in s.channels:
            assert row[f"from_{name}"] <= s.quota(name, segs)
        assert row.retrieved <= s.total_quota
    assert (funnel.preranked <= s.preranking.interest + s.preranking.diverse).all()


def test_every_item_names_the_channels_that_found_it(feeds) -> None:
    cfg, _, rows, _, _ = feeds
    s = cfg.serving.strategy(cfg.serving.default_strategy)
    ranked = rows[rows.decision != "exploration"]
    assert ranked.channels.str.len().gt(0).all()
    assert set(",".join(ranked.channels).split(",")) <= set(s.channels)
    assert (rows[rows.decision == "exploration"].channels == s.exploration.pool).all()


def test_exploration_share_matches_the_setting(served_world) -> None:
    cfg, day = served_world
    serving = cfg.serving.model_copy(update={"strategies": {**cfg.serving.strategies, "explore3": cfg.serving.strategy(
        "default").model_copy(update={"exploration": cfg.serving.strategy("default").exploration.model_copy(
            update={"share": 0.03})})}})
    cfg3 = cfg.model_copy(update={"serving": serving})
    ctx = load_context(cfg3, day)
    users = np.unique(ctx.clicks.user_id)[:400]
    rows = recommend(ctx, users, "explore3").rows
    share = (rows.decision == "exploration").mean()
    assert abs(share - 0.03) <= 0.005, share
    with connect(cfg) as con:
        pool = {r[0] for r in con.execute("select item_id from pool_current_members where pool = 'exploration'").fetchall()}
    assert set(rows[rows.decision == "exploration"].item_id) <= pool


def test_a_new_user_gets_a_full_feed_from_pools(served_world) -> None:
    cfg, day = served_world
    ctx = load_context(cfg, day)
    out = recommend(ctx, np.array([10_000_000]))
    assert len(out.rows) == cfg.serving.strategy("default").feed_length
    assert out.rows.item_id.is_unique


def test_a_broken_artifact_serves_the_other_channels_and_alerts_once(served_world) -> None:
    cfg, day = served_world
    version = artifacts.current(registry.model_store(cfg, "itemcf"))
    neighbours = version.path / "neighbours.npy"
    saved = neighbours.read_bytes()
    index = ann_refresh.index_store(cfg, "two_tower", "pool_30d")
    moved = index.with_name("pool_30d.moved")
    alerts_before = len(read_alerts(cfg))
    try:
        neighbours.write_bytes(b"not a numpy file")
        index.rename(moved)  # the pool's index is missing
        ctx = load_context(cfg, day)
        assert "itemcf" in ctx.broken and "ann:two_tower:pool_30d" in ctx.broken
        out = recommend(ctx, np.unique(ctx.clicks.user_id)[:20])
        assert (out.rows.groupby("user_id").size() == cfg.serving.strategy("default").feed_length).all()
        assert (out.funnel.from_itemcf == 0).all() and (out.funnel.from_two_tower_30d == 0).all()
        assert (out.funnel.from_swing > 0).any()
        alerts = read_alerts(cfg)[alerts_before:]
        assert len(alerts) == 1 and "itemcf" in alerts[0]["title"]
    finally:
        neighbours.write_bytes(saved)
        moved.rename(index)


def test_recommend_explains_a_feed_on_the_command_line(served_world) -> None:
    cfg, day = served_world
    user = int(load_context(cfg, day).clicks.user_id[0])
    out = subprocess.run([str(Path(sys.executable).parent / "recpipe"), "recommend", "--user", str(user), "--day", str(day),
                          "--explain"], check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"feed of user {user}" in out.stdout and "funnel" in out.stdout and "bonus_follow" in out.stdout


def test_nightly_feeds_are_gated_published_and_rerun_the_same(served_world) -> None:
    """The feeds of every user expected back, gated, published and written; a re-run in two worker
    processes (`serving.processes`) writes a new version with the same rows."""
    cfg, day = served_world
    first = batch.run(cfg, day)
    store = registry.feed_store(cfg)
    current = artifacts.current(store)
    assert current.name == first["version"] and current.meta["gate_passed"]
    stored = pd.read_parquet(current.path / batch.FILE)
    with connect(cfg) as con:
        table = con.execute("select * from feeds where day = ? order by user_id, position",
                            [day + dt.timedelta(days=1)]).df()
    assert len(table) == len(stored) == first["rows"] > 0
    assert table.item_id.tolist() == stored.sort_values(["user_id", "position"]).item_id.tolist()
    first_days = np.datetime64(day - dt.timedelta(days=cfg.serving.returning_days - 1))
    with connect(cfg) as con:
        expected_users = {r[0] for r in con.execute(
            "select distinct user_id from raw.events where event_type in ('impression', 'click') and dt between ? and ?",
            [first_days.astype(object), day]).fetchall()}
    assert set(table.user_id) == expected_users  # every user expected back has a feed
    assert len(expected_users) > BLOCK_USERS  # more than one block: the re-run shares them out
    two = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"processes": 2})})
    again = batch.run(two, day)  # in two worker processes
    with connect(cfg) as con:
        rerun = con.execute("select * from feeds where day = ? order by user_id, position",
                            [day + dt.timedelta(days=1)]).df()
    assert again["version"] != first["version"]
    assert rerun.drop(columns=["version"]).equals(table.drop(columns=["version"]))


def test_block_workers_end_when_the_iteration_is_abandoned_whatever_the_sigterm_handler(served_world) -> None:
    """Workers forked under a SIGTERM handler that does not exit (an Airflow task runner installs
    one): a consumer that stops after the first block still gets control back, the workers gone."""
    cfg, day = served_world
    ctx = load_context(cfg, day)
    users = np.unique(ctx.clicks.user_id)[: 3 * BLOCK_USERS]
    assert len(users) > 2 * BLOCK_USERS  # three blocks for two workers
    done, workers = threading.Event(), []

    def first_block_only() -> None:
        blocks = feeds_in_blocks(ctx, [("default", None, users)], processes=2)
        next(blocks)
        workers.extend(multiprocessing.active_children())
        blocks.close()  # Pool.terminate: SIGTERM to the workers still computing
        done.set()

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        threading.Thread(target=first_block_only, daemon=True).start()
        ended = done.wait(timeout=120)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for worker in multiprocessing.active_children():  # a failed run must not hang this process's exit
            worker.kill()
    assert ended, "the pool waited for a worker that outlived SIGTERM"
    assert workers and not any(w.is_alive() for w in workers)


@pytest.mark.parametrize("fault", ["duplicate", "seen", "spacing", "exploration", "strategy"])
def test_the_feed_suite_rejects_broken_feeds(served_world, fault: str) -> None:
    cfg, day = served_world
    ctx = load_context(cfg, day)
    users = np.unique(ctx.clicks.user_id)[:40]
    rows = recommend(ctx, users).rows.copy()
    s = cfg.serving.strategy("default")
    if fault == "duplicate":
        rows.loc[1, "item_id"] = rows.loc[0, "item_id"]
    elif fault == "seen":
        u = int(rows.user_id.iloc[0])
        rows.loc[0, "item_id"] = int(ctx.catalogue.item_id[ctx.clicks.item[ctx.clicks.user_id == u][0]])
    elif fault == "spacing":
        same = ctx.catalogue.item_id[ctx.catalogue.content_cluster == ctx.catalogue.content_cluster[0]]
        feed = rows.index[(rows.user_id == rows.user_id.iloc[0]) & (rows.decision == "ranked")][:2]
        rows.loc[feed, "item_id"] = same[:2]
    elif fault == "exploration":
        rows.loc[rows.decision == "exploration", "decision"] = "ranked"
    checks = batch.feed_checks(ctx, rows)
    strategies = ["default", "mmr"] if fault == "strategy" else ["default"]
    outcome = validate_frame(checks, "feeds", feed_expectations(
        s.feed_length, strategies, {"default": s.exploration.share}, cfg.serving.max_exploration_deviation))
    assert not outcome.success
    clean = validate_frame(batch.feed_checks(ctx, recommend(ctx, users).rows), "feeds", feed_expectations(
        s.feed_length, ["default"], {"default": s.exploration.share}, cfg.serving.max_exploration_deviation))
    assert clean.success, clean.failed


def test_special_group_models_correct_only_their_users(served_world) -> None:
    """With a residual model (new / low-activity users) and a calibrator (its segment) current, the
    served predictions change for those users only."""
    cfg, day = served_world
    full_version = artifacts.current(registry.model_store(cfg, "full_ranking"))
    residual = special_groups.train_residual(cfg, day, full_version, days=3, make_current=True)
    calibrator = special_groups.train_calibrator(cfg, day, full_version, days=3, make_current=True)
    try:
        ctx = load_context(cfg, day)
        assert ctx.residual is not None and ctx.calibrator is not None
        plain = dataclasses.replace(ctx, residual=None, calibrator=None)
        groups = set(cfg.ranking.special_groups.residual_segments) | {cfg.ranking.special_groups.calibrated_segment}
        users = np.unique(ctx.clicks.user_id)
        inside = [u for u in users if set(ctx.user_segments(u)) & groups][:10]
        outside = [u for u in users if not set(ctx.user_segments(u)) & groups][:10]
        exposures = funnel.exposures_for(ctx, np.repeat(inside + outside, 20), np.tile(np.arange(20), 20))
        corrected, raw = funnel.full_scores(ctx, exposures), funnel.full_scores(plain, exposures)
        is_inside = np.isin(exposures.user_id, inside)
        assert np.allclose(corrected[~is_inside], raw[~is_inside], atol=1e-5)
        assert np.abs(corrected[is_inside] - raw[is_inside]).max() > 1e-4
    finally:  # the shared world had neither model before
        shutil.rmtree(residual.path.parent.parent)
        shutil.rmtree(calibrator.path.parent.parent)


def test_ranking_scores_match_the_models_own_inputs(served_world) -> None:
    """The funnel's pre-ranker and full-ranker scores (users encoded once, tables from the context)
    equal the models' per-row pipelines: `tasks.ranking.pre.inputs` + `predict` and
    `ranking_features` + `predict_proba` on the same exposures."""
    cfg, day = served_world
    ctx = load_context(cfg, day)
    users = np.unique(ctx.clicks.user_id)[:30]
    rng = np.random.default_rng(1)
    exposures = funnel.exposures_for(ctx, np.repeat(users, 40), rng.integers(0, len(ctx.catalogue), 40 * len(users)))
    s = cfg.serving.strategy(cfg.serving.default_strategy)
    model, vocabs, version = ctx.pre
    x = pre_inputs(vocabs, PreContext(ctx.catalogue, ctx.users, ctx.clicks, ctx.day), exposures,
                   version.meta["config"]["sequence_length"])
    np.testing.assert_allclose(funnel.prerank_scores(ctx, s, exposures)[0], pre_predict(model, x.users, x.seq, x.items),
                               rtol=0, atol=1e-6)
    model, vocabs, version = ctx.full
    f = ranking_features(vocabs, ctx.catalogue, ctx.users, ctx.clicks, exposures,
                         version.meta["config"]["full"]["sequence_length"])
    np.testing.assert_allclose(funnel.full_scores(ctx, exposures), predict_proba(model, f.users, f.items, f.context, f.seq),
                               rtol=0, atol=1e-6)


def test_seen_matrix_holds_the_shown_and_clicked_items(served_world) -> None:
    cfg, day = served_world
    ctx = load_context(cfg, day)
    users = np.r_[np.unique(ctx.clicks.user_id)[:40], -1]  # and an unknown user
    seen = seen_matrix(ctx, users)
    expected = {(u, i) for u, i in _shown_or_clicked(cfg, day) if u in set(users.tolist())}
    r, c = seen.nonzero()
    assert {(int(users[a]), int(ctx.catalogue.item_id[b])) for a, b in zip(r, c)} == expected
    assert (seen.data == 1).all()


def test_popularity_returns_the_most_clicked_unseen_items_lowest_row_first_on_ties() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        n_items, n = int(rng.integers(1, 200)), int(rng.integers(0, 1500))
        events = Events(rng.integers(0, 30, n), rng.integers(0, n_items, n), np.arange(n),
                        np.zeros(n, "datetime64[D]"))
        counts = np.bincount(events.item, minlength=n_items)
        users = rng.choice(40, int(rng.integers(0, 20)), replace=False)
        for k in (0, 1, 7, n_items + 3):
            got = Popularity(events, n_items).retrieve(users, k)
            for row, u in zip(got, users):
                mine = set(events.item[events.user_id == u].tolist())
                best = sorted((i for i in range(n_items) if i not in mine), key=lambda i: (-counts[i], i))[:k]
                assert row.tolist() == best + [-1] * (k - len(best))
