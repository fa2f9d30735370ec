"""Exposure policies: what each session's feed shows, chosen by `SimulatorConfig.exposure_policy`.

A policy is a function `(ctx, user_ids, slots, rng) -> item_ids`:

- `ctx` (ExposureContext): the day and the items that may be shown today (published before the
  day, not expired by its end), with their features and yesterday's clicks;
- `user_ids`: one entry per feed request (one request = one session; a user with several
  sessions appears several times);
- `slots`: how many items each request needs (>= 1);
- `rng`: the policy's own random stream (deterministic per seed and day).

It returns `slots.sum()` item ids (int64), request-major: the first `slots[0]` ids fill request 0,
in feed order, and so on. Every id must be one of `ctx.item_ids`. Instead of the plain array it may
return a `Served`: the same ids plus, per slot, the serving strategy and the retrieval channel(s)
(str, None = null), which the simulator writes to the events' `strategy` / `channel` columns of the
impression and of its click and post-click actions (null for a plain array). Register a new policy with
`@register_policy("name")`; a policy built from nightly artifacts reads them itself (paths from
the platform config).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.core.config import SimulatorConfig
from tasks.simulator.world import US_PER_DAY, day_start_us, weighted_choice


@dataclass(frozen=True)
class ExposureContext:
    """The state a policy may read on `day`. Item arrays are aligned with `item_ids`."""

    config: SimulatorConfig
    day: dt.date
    item_ids: np.ndarray  # int64 ids of the items that may be shown today
    item_l2: np.ndarray  # int16 second-level category index (0 .. n_categories-1)
    item_author_ids: np.ndarray  # int64
    item_publish_us: np.ndarray  # int64 publish time, microseconds since the epoch (UTC)
    item_clicks_yesterday: np.ndarray  # int64
    n_categories: int
    # Latent interests of every user (row = user_id - 1): only simulated "organic" policies
    # may use them; a policy under evaluation should learn from the contract tables instead.
    # Columns: the initial interests (descending weight, summing to 1), then the dormant ones
    # (category -1 = none), whose weight grows from 0 as they are discovered (world.py).
    interest_l2: np.ndarray  # int16 (n_users, k) category index
    interest_w: np.ndarray  # float32 (n_users, k) weights, rows sum to >= 1


@dataclass(frozen=True)
class Served:
    """A policy's feed with its provenance: item ids (as the plain return value) and, optionally, an
    object array of str (None = null) per slot naming the serving strategy and the retrieval channel(s)."""

    item_ids: np.ndarray
    strategy: np.ndarray | None = None
    channel: np.ndarray | None = None


ExposurePolicy = Callable[[ExposureContext, np.ndarray, np.ndarray, np.random.Generator], np.ndarray | Served]
EXPOSURE_POLICIES: dict[str, ExposurePolicy] = {}


def register_policy(name: str) -> Callable[[ExposurePolicy], ExposurePolicy]:
    """Decorator: make a policy selectable as `simulator.exposure_policy: name`."""

    def add(policy: ExposurePolicy) -> ExposurePolicy:
        if name in EXPOSURE_POLICIES:
            raise ValueError(f"exposure policy {name!r} is already registered")
        EXPOSURE_POLICIES[name] = policy
        return policy

    return add


def get_policy(name: str) -> ExposurePolicy:
    """The registered policy `name` (ValueError naming the known ones otherwise)."""
    try:
        return EXPOSURE_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown exposure policy {name!r}; registered: {sorted(EXPOSURE_POLICIES)}"
        ) from None


@register_policy("default")
def mixed_policy(
    ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Each slot is popular, fresh or interest-matched (shares from the config); popular fills gaps."""
    cfg = ctx.config
    n = int(slots.sum())
    owner = np.repeat(user_ids - 1, slots)
    u = rng.random(n)
    fresh = (u >= cfg.exposure_popular_share) & (u < cfg.exposure_popular_share + cfg.exposure_fresh_share)
    interest = u >= cfg.exposure_popular_share + cfg.exposure_fresh_share
    pos = np.full(n, -1, dtype=np.int64)

    # Interest-matched: a category from the user's interests (by weight), then a uniform item of it.
    rows = np.flatnonzero(interest)
    cum = np.cumsum(ctx.interest_w[owner[rows]], axis=1)
    x = rng.random(len(rows))[:, None] * cum[:, -1:]
    pick = np.minimum((x >= cum).sum(axis=1), cum.shape[1] - 1)  # skips weight-0 slots
    cat = ctx.interest_l2[owner[rows], pick]
    by_cat = np.argsort(ctx.item_l2, kind="stable")
    count = np.bincount(ctx.item_l2, minlength=ctx.n_categories)
    first = np.cumsum(count) - count
    offset = (rng.random(len(rows)) * count[cat]).astype(np.int64)
    has = count[cat] > 0
    pos[rows[has]] = by_cat[first[cat[has]] + offset[has]]

    # Fresh: uniform over the items published in the last `fresh_days` days.
    cutoff = day_start_us(ctx.day) - cfg.fresh_days * US_PER_DAY
    recent = np.flatnonzero(ctx.item_publish_us >= cutoff)
    rows = np.flatnonzero(fresh)
    if len(recent):
        pos[rows] = recent[rng.integers(0, len(recent), len(rows))]

    rest = np.flatnonzero(pos < 0)
    pos[rest] = weighted_choice(ctx.item_clicks_yesterday + 0.05, len(rest), rng)
    return ctx.item_ids[pos]
