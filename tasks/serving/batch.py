"""Nightly batch feeds (docs/METHODS.md "Batch feeds"): the next day's feeds of every user expected
back (active in the last `serving.returning_days` days, or all users), for each batch strategy,
computed in blocks of users through the same funnel as `recpipe serve`; published as a versioned
artifact (feeds.parquet) whose pointer moves only after the GX suite passes, and written to the
warehouse table `feeds` (the served day's rows replaced).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from expectations.runner import require_valid, validate_frame
from expectations.serving import feed_expectations
from models.serving.diversity import spacing_violations
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.core.warehouse import replace_rows
from tasks.ops.alerts import DataQualityRejected
from tasks.serving.blocks import feeds_in_blocks
from tasks.serving.context import ServingContext, load_context, seen_matrix

log = logging.getLogger(__name__)
TABLE = "feeds"
FILE = "feeds.parquet"


class FeedsRejected(DataQualityRejected):
    """The night's feeds failed their GX suite; yesterday's feeds stay current."""


def batch_users(ctx: ServingContext) -> np.ndarray:
    """Users with a feed tonight: active in the last `returning_days` days, or every known user."""
    s = ctx.cfg.serving
    if s.batch_users == "all":
        return np.union1d(ctx.users.user_id, ctx.clicks.user_id)
    first = np.datetime64(ctx.day - dt.timedelta(days=s.returning_days - 1))
    return np.unique(np.r_[ctx.impressions.user_id[ctx.impressions.day >= first], ctx.clicks.user_id[ctx.clicks.day >= first]])


def compute_feeds(ctx: ServingContext, users: np.ndarray, strategies: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(feed rows, funnel rows) of `users` under each strategy, in blocks (`serving.processes`
    worker processes); one progress line per block."""
    rows, funnels = [], []
    started = time.perf_counter()
    done = 0
    for strategy, block, out in feeds_in_blocks(ctx, [(s, None, users) for s in strategies], ctx.cfg.serving.processes):
        rows.append(out.rows)
        funnels.append(out.funnel.assign(strategy=strategy))
        done += len(block)
        log.info("feeds %s: %d/%d feeds, %.0f feeds/s", strategy, done, len(users) * len(strategies),
                 done / max(time.perf_counter() - started, 1e-9))
    return pd.concat(rows, ignore_index=True), pd.concat(funnels, ignore_index=True)


def feed_checks(ctx: ServingContext, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, user) feed with what the GX suite checks, recomputed from the rows."""
    s = ctx.cfg.serving
    item_rows = ctx.catalogue.index(rows.item_id.to_numpy(np.int64))
    users = np.unique(rows.user_id.to_numpy(np.int64))
    seen = seen_matrix(ctx, users)
    user_row = np.searchsorted(users, rows.user_id.to_numpy(np.int64))
    frame = rows.assign(
        seen=np.asarray(seen[user_row, item_rows]).ravel() > 0, expired=ctx.expired[item_rows],
        category=ctx.catalogue.category_l2[item_rows], cluster=ctx.catalogue.content_cluster[item_rows],
        exploration=rows.decision == "exploration",
    ).sort_values(["strategy", "user_id", "position"])
    out = []
    for (strategy, user), feed in frame.groupby(["strategy", "user_id"], sort=False):
        d = s.strategy(strategy).diversity
        ranked = feed[~feed.exploration & (feed.decision != "ranked, spacing relaxed")]
        out.append({"strategy": strategy, "user_id": user, "length": len(feed),
                    "duplicates": int(feed.item_id.duplicated().sum()), "seen": int(feed.seen.sum()),
                    "expired": int(feed.expired.sum()),
                    "spacing_violations": spacing_violations(ranked.category.to_numpy(), ranked.cluster.to_numpy(),
                                                             d.category_gap, d.cluster_gap),
                    "exploration": int(feed.exploration.sum())})
    checks = pd.DataFrame(out)
    for strategy in checks.strategy.unique():
        mine = checks.strategy == strategy
        checks[f"exploration_share_{strategy}"] = np.where(
            mine, checks[mine].exploration.sum() / max(checks[mine].length.sum(), 1), np.nan)
    return checks


def run(cfg: PlatformConfig, day: dt.date, strategies: list[str] | None = None) -> dict[str, Any]:
    """The feeds for day + 1 from the data through `day`: compute, check, publish, write."""
    strategies = strategies or list(cfg.serving.batch_strategies)
    ctx = load_context(cfg, day)
    users = batch_users(ctx)
    started = time.perf_counter()
    rows, funnel = compute_feeds(ctx, users, strategies)
    seconds = time.perf_counter() - started
    served = day + dt.timedelta(days=1)
    checks = feed_checks(ctx, rows)
    strategy_cfgs = {name: cfg.serving.strategy(name) for name in strategies}
    lengths = {c.feed_length for c in strategy_cfgs.values()}
    outcome = validate_frame(checks, "feeds", feed_expectations(
        max(lengths), strategies, {n: c.exploration.share for n, c in strategy_cfgs.items()},
        cfg.serving.max_exploration_deviation))
    meta = {"day": str(served), "data_through": str(day), "strategies": strategies, "users": int(len(users)),
            "rows": int(len(rows)), "versions": ctx.versions, "broken": ctx.broken,
            "feeds_per_s": round(len(users) * len(strategies) / max(seconds, 1e-9), 1), "gate_passed": outcome.success}
    store = registry.feed_store(cfg)
    version = artifacts.publish(store, lambda folder: _write(folder, rows, funnel), meta, make_current=False)
    require_valid(cfg, outcome, FeedsRejected, source="feeds.publish",
                  title=f"feeds for {served} rejected: yesterday's feeds stay current",
                  details={"day": str(served), "version": version.name})
    replace_rows(cfg, TABLE, rows.assign(day=served, version=version.name), ["day"])
    artifacts.switch(store, version.name)
    artifacts.prune(store, cfg.serving.versions_kept)
    log.info("feeds for %s: %d users x %d strategies, %d rows, %.0f feeds/s; version %s", served, len(users),
             len(strategies), len(rows), meta["feeds_per_s"], version.name)
    return {**meta, "version": version.name}


def _write(folder: Path, rows: pd.DataFrame, funnel: pd.DataFrame) -> dict[str, Any]:
    rows.to_parquet(folder / FILE, index=False)
    funnel.to_parquet(folder / "funnel.parquet", index=False)
    return {}
