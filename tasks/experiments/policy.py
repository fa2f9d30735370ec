"""The closed-loop exposure policy (docs/METHODS.md "Closed loop"): the simulator's sessions are
filled by the recommendation path, each user under the strategy of the experiment arms they are in.

On a simulated day d the funnel runs in this process (the same `recommend` as `recpipe serve` and the
batch feeds) from the artifacts current at the start of d and the warehouse through d - 1: one feed of
`feed_length` items per active user and strategy. A user's sessions consume the feed in order; items
that may not be shown on d (expired during it) are skipped, and slots beyond the feed are filled by
the organic policy (channel `organic_fill`). The first `simulator.organic_days` days, and any day
without a loaded day before it, are organic: there is nothing to serve from yet.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.contract import FILL_CHANNEL
from tasks.experiments.assignment import arm_index, is_served, strategy_keys, strategy_of_key
from tasks.experiments.loop import first_served_day, is_closed_loop
from tasks.serving.blocks import feeds_in_blocks
from tasks.serving.context import load_context
from tasks.simulator import ExposureContext, ExposurePolicy, Served, get_policy

log = logging.getLogger(__name__)
ORGANIC = "default"  # the built-in organic policy: warm-up days and fill beyond a feed


def policy_for_day(cfg: PlatformConfig, day: dt.date) -> ExposurePolicy:
    """The exposure policy of simulated `day`: organic while warming up, else the closed loop."""
    if not is_closed_loop(cfg) or day < first_served_day(cfg):
        return get_policy(ORGANIC)
    return closed_loop_policy(cfg, day)


def served_feeds(cfg: PlatformConfig, day: dt.date, user_ids: np.ndarray) -> pd.DataFrame:
    """The feeds of `user_ids` on `day` (user_id, position, item_id, strategy, channels), each user
    under the strategy key of the arms they are in, from the serving context of day - 1."""
    ctx = load_context(cfg, day - dt.timedelta(days=1))
    keys = strategy_keys(cfg, user_ids, day)
    groups = [(key, strategy_of_key(cfg, key), user_ids[keys == key]) for key in pd.unique(keys)]
    started = time.perf_counter()
    frames = [feeds.rows[["user_id", "position", "item_id", "strategy", "channels"]]
              for _, _, feeds in feeds_in_blocks(ctx, groups, cfg.serving.processes)]
    seconds = time.perf_counter() - started
    log.info("closed loop %s: %d feeds under %d strategies in %.1f s (%.0f feeds/s)", day, len(user_ids),
             len(set(keys)), seconds, len(user_ids) / max(seconds, 1e-9))
    if not frames:
        return pd.DataFrame(columns=["user_id", "position", "item_id", "strategy", "channels"])
    return pd.concat(frames, ignore_index=True)


def closed_loop_policy(cfg: PlatformConfig, day: dt.date) -> ExposurePolicy:
    """The policy serving `day` from the recommendation path (see the module docstring)."""
    organic = get_policy(ORGANIC)

    def policy(ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator) -> Served:
        users = np.unique(user_ids)
        feeds = served_feeds(cfg, day, users)
        feeds = feeds[np.isin(feeds.item_id.to_numpy(np.int64), ctx.item_ids)]
        feeds = feeds.sort_values(["user_id", "position"], kind="stable")
        n = int(slots.sum())
        # Slot j of a user (over their sessions in order) takes the j-th item of their feed.
        owner = np.repeat(user_ids, slots)
        order = np.argsort(owner, kind="stable")
        rank = np.empty(n, np.int64)
        starts = np.searchsorted(owner[order], owner[order])
        rank[order] = np.arange(n) - starts
        feed_users = feeds.user_id.to_numpy(np.int64)
        feed_start = np.searchsorted(feed_users, owner)
        feed_len = np.searchsorted(feed_users, owner, side="right") - feed_start
        has = rank < feed_len
        src = feed_start[has] + rank[has]
        items = np.zeros(n, np.int64)
        strategy = np.empty(n, dtype=object)
        channel = np.empty(n, dtype=object)
        items[has] = feeds.item_id.to_numpy(np.int64)[src]
        strategy[has] = feeds.strategy.to_numpy(object)[src]
        channel[has] = feeds.channels.to_numpy(object)[src]
        fill = np.flatnonzero(~has)
        if len(fill):  # beyond the feed: organic items, one request per slot
            items[fill] = organic(ctx, owner[fill], np.ones(len(fill), np.int64), rng)
            keys = strategy_keys(cfg, owner[fill], day)
            strategy[fill], channel[fill] = keys, FILL_CHANNEL
        log.info("closed loop %s: %d users, %d slots, %.1f%% filled organically", day, len(users), n,
                 100 * len(fill) / max(n, 1))
        return Served(item_ids=items, strategy=strategy, channel=channel)

    return policy


def planted_shift(cfg: PlatformConfig) -> Callable[[np.ndarray, dt.date], np.ndarray] | None:
    """The satisfaction shift of the experiments' planted effects (simulator ground truth), or None."""
    planted = [(e, list(e.arms).index(arm), effect["satisfaction"])
               for e in cfg.experiments for arm, effect in e.planted.items() if "satisfaction" in effect]
    if not planted:
        return None

    def shift(user_ids: np.ndarray, day: dt.date) -> np.ndarray:
        out = np.zeros(len(user_ids), np.float64)
        for e, arm, delta in planted:
            if is_served(e, day):
                out += np.where(arm_index(cfg, e, user_ids) == arm, delta, 0.0)
        return out

    return shift
