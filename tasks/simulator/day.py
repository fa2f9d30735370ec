"""One simulated day: who comes back, their sessions and feeds, clicks and actions, offsite visits,
publishing and follows; then the carried state moves on (the world is updated in place).

Each day draws from its own random streams, seeded by (seed, day), so a day depends only on the
seed and the state left by the previous day (and the planted `satisfaction_shift`, if any). Times are
microseconds since the epoch (UTC).

Planted effect: `satisfaction_shift(user_ids, day)` gets the ids of the day's active users and returns
a per-user additive shift of their satisfaction today (the result is clipped to [0, 1)); it moves
their next-day return logit by satisfaction_effect * (1 + new-user boost) * the applied shift
(ground truth: user_days.satisfaction_shift and logit_planted). State snapshots do not record it:
replays and resumed days must be given the same function.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.core.config import SimulatorConfig
from tasks.simulator import behaviour as bh
from tasks.simulator import tables
from tasks.simulator.events import Labels, SessionLayout, VisitLayout, encode_labels, layout_events
from tasks.simulator.exposure import ExposureContext, ExposurePolicy, Served
from tasks.simulator.world import US_PER_DAY, Taxonomy, World, day_number, day_start_us, new_items, new_users

_STREAMS = (
    "activity", "users", "sessions", "policy", "clicks", "actions",
    "timeline", "visits", "publish", "follows",
)  # fmt: skip
LOAD_US = 1_000_000  # from session start to the first impression (plus PUBLISH_US per upload)
PUBLISH_US = 30_000_000
# Offsets of the post-click actions (like, favorite, share, comment, follow) as shares of the dwell.
ACTION_AT = np.array([0.3, 0.5, 0.7, 0.8, 0.9])
SatisfactionShift = Callable[[np.ndarray, dt.date], np.ndarray]


@dataclass(frozen=True)
class DayOutput:
    """A simulated day: its contract tables, its ground-truth partitions and its DAU."""

    day: dt.date
    tables: dict[str, pa.Table]
    truth: dict[str, pa.Table]
    dau: int


def _within_group(counts: np.ndarray) -> np.ndarray:
    """0, 1, .., c-1 for each group of size c, concatenated."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def _exposure_context(world: World, cfg: SimulatorConfig, tax: Taxonomy, day: dt.date) -> ExposureContext:
    """Today's showable items: published before the day, not expired by its end."""
    items = world.items
    d0 = day_start_us(day)
    live = np.flatnonzero(
        (items.publish_us < d0) & ((items.expire_us < 0) | (items.expire_us > d0 + US_PER_DAY))
    )
    return ExposureContext(
        config=cfg,
        day=day,
        item_ids=live + 1,
        item_l2=items.l2[live],
        item_author_ids=items.author[live].astype(np.int64) + 1,
        item_publish_us=items.publish_us[live],
        item_clicks_yesterday=items.clicks[live].astype(np.int64),
        n_categories=tax.n_l2,
        interest_l2=world.users.interest_l2,
        interest_w=world.users.interest_w,
    )


def _exposures(
    ctx: ExposureContext,
    policy: ExposurePolicy,
    sess_user: np.ndarray,
    n_imp: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, Labels, Labels]:
    """Item indices the policy shows, checked against today's showable items, and their strategy
    and channel labels."""
    if len(ctx.item_ids) == 0:
        raise RuntimeError(f"{ctx.day}: no item may be shown (empty or expired catalogue)")
    n = int(n_imp.sum())
    served = policy(ctx, sess_user + 1, n_imp, rng)
    if not isinstance(served, Served):
        served = Served(served)
    ids = np.asarray(served.item_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"exposure policy returned {ids.shape} {ids.dtype}, expected ({n},) integers")
    showable = np.zeros(n_items + 1, dtype=bool)
    showable[ctx.item_ids] = True
    if len(ids) and (ids.min() < 1 or ids.max() > n_items or not showable[ids].all()):
        raise ValueError("exposure policy returned item ids that may not be shown today")
    return ids.astype(np.int64) - 1, encode_labels(served.strategy, n), encode_labels(served.channel, n)


def _offsite_visits(
    cfg: SimulatorConfig,
    world: World,
    n_old: int,
    sharer: np.ndarray,
    item: np.ndarray,
    share_ts: np.ndarray,
    last_us: int,
    rng: np.random.Generator,
) -> VisitLayout:
    """Visits through shared links (KOLs' bring many more), each a short session after the share and
    before `last_us`: a share `offsite_signup_share` by people who sign up (user indices from
    len(world.users) on, to be appended), the others by an existing user (anyone but the sharer)."""
    mean = cfg.offsite_visits_per_share * np.where(world.users.is_kol[sharer], cfg.kol_visit_multiplier, 1.0)
    n_vis = rng.poisson(mean) if n_old > 1 else np.zeros(len(sharer), dtype=np.int64)
    referrer = np.repeat(sharer, n_vis)
    shared_at = np.repeat(share_ts, n_vis)
    visitor = rng.integers(0, max(n_old - 1, 1), len(referrer))
    visitor += visitor >= referrer
    signup = rng.random(len(referrer)) < cfg.offsite_signup_share
    visitor[signup] = len(world.users) + np.arange(int(signup.sum()))
    length = np.clip(rng.lognormal(np.log(30e6), 0.8, len(referrer)), 2e6, 600e6).astype(np.int64)
    length = np.minimum(length, last_us - shared_at)
    delay = rng.exponential(bh.VISIT_DELAY_MEAN_US, len(referrer)).astype(np.int64)
    t0 = np.clip(shared_at + delay, shared_at, last_us - length)
    return VisitLayout(user=visitor, referrer=referrer, item=np.repeat(item, n_vis), t0=t0, length=length)


def _follow_changes(
    world: World,
    unfollow_rate: float,
    follower: np.ndarray,
    author: np.ndarray,
    follow_ts: np.ndarray,
    user_first_session: np.ndarray,
    sess_t0: np.ndarray,
    sess_len: np.ndarray,
    rng: np.random.Generator,
) -> tuple[pa.Table, np.ndarray]:
    """The day's follows table and the new edge set: today's follows plus unfollows of existing
    edges by active users (during their first session)."""
    edges = world.follows
    edge_sess = user_first_session[edges >> 32]
    dropped = (edge_sess >= 0) & (rng.random(len(edges)) < unfollow_rate)
    unf_sess = edge_sess[dropped]
    unf_ts = sess_t0[unf_sess] + (rng.random(len(unf_sess)) * sess_len[unf_sess]).astype(np.int64)
    new_edges = (follower.astype(np.int64) << 32) | author
    table = tables.follows_table(
        follower=np.concatenate([follower, edges[dropped] >> 32]),
        author=np.concatenate([author, edges[dropped] & 0xFFFFFFFF]),
        ts=np.concatenate([follow_ts, unf_ts]),
        is_follow=np.arange(len(follower) + len(unf_ts)) < len(follower),
    )
    return table, np.sort(np.concatenate([edges[~dropped], new_edges]))


def step(
    world: World,
    cfg: SimulatorConfig,
    tax: Taxonomy,
    day: dt.date,
    policy: ExposurePolicy,
    satisfaction_shift: SatisfactionShift | None = None,
) -> DayOutput:
    """Simulate `day` on `world` (which must stand at the end of the previous day), with an optional
    planted satisfaction shift (module docstring)."""
    dn = day_number(day)
    if world.last_day != dn - 1:
        raise ValueError(f"the world stands at day {world.last_day}, cannot simulate {day}")
    seeds = np.random.SeedSequence([cfg.seed, 3, dn]).spawn(len(_STREAMS))
    rng = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, seeds)}
    d0 = day_start_us(day)
    users, items = world.users, world.items
    n_old, n_items_old = len(users), len(items)

    # Who comes back, and who signs up (new users are active on their signup day).
    p_back = bh.return_probability(users, world.following_count(), cfg, dn)
    active_old = np.flatnonzero(rng["activity"].random(n_old) < p_back)
    n_new = int(rng["users"].poisson(cfg.new_users_per_day * n_old))
    users.append(new_users(cfg, tax, n_new, np.full(n_new, d0), rng["users"]))
    n_users = len(users)
    act = np.concatenate([active_old, np.arange(n_old, n_users)])

    # Sessions, their feeds, clicks and post-click actions.
    r = rng["sessions"]
    n_sess_u = np.minimum(1 + r.poisson(cfg.sessions_per_active_user - 1, len(act)), bh.MAX_SESSIONS)
    sess_user = np.repeat(act, n_sess_u)
    sess_first = np.cumsum(n_sess_u) - n_sess_u  # each active user's first session
    depth = (cfg.impressions_per_session - 1) * users.depth[sess_user]
    n_imp = np.minimum(1 + r.poisson(depth), bh.MAX_IMPRESSIONS)
    ctx = _exposure_context(world, cfg, tax, day)
    imp_item, imp_strategy, imp_channel = _exposures(ctx, policy, sess_user, n_imp, n_items_old, rng["policy"])
    imp_sess = np.repeat(np.arange(len(sess_user)), n_imp)
    imp_first = np.cumsum(n_imp) - n_imp
    imp_user = sess_user[imp_sess]
    followed = world.is_following(imp_user, items.author[imp_item])
    aff = bh.affinity(users, items, imp_user, imp_item)
    repeats = bh.session_repeats(imp_sess, items.l2[imp_item], tax.n_l2)
    p_click = bh.click_probability(aff, followed, repeats, cfg.fatigue_effect)
    clicked = np.flatnonzero(rng["clicks"].random(len(aff)) < p_click)
    c_user, c_item, c_aff = imp_user[clicked], imp_item[clicked], aff[clicked]
    actions = bh.post_click_actions(
        world, c_user, c_item, c_aff, followed[clicked], world.fan_count(), rng["actions"]
    )
    dwell = bh.dwell_ms(items, c_item, c_aff, rng["actions"])

    # Uploads by active creators, at the start of their first session.
    fans, comments = world.recent_reactions(dn)
    pub_rate = bh.publish_rate(users, cfg, act, fans, comments)
    n_pub_u = np.minimum(rng["publish"].poisson(pub_rate), bh.MAX_PUBLISH)
    n_pub = np.zeros(len(sess_user), dtype=np.int64)
    n_pub[sess_first] = n_pub_u

    # Timeline: impressions advance by a scroll gap, clicks by a delay plus the dwell.
    r = rng["timeline"]
    advance = np.clip(r.lognormal(np.log(2.5e6), 0.6, len(imp_item)), 2e5, 6e7).astype(np.int64)
    click_delay = r.integers(300_000, 1_500_000, len(clicked))
    advance[clicked] += click_delay + dwell * 1000
    before = np.cumsum(advance) - advance
    pre = LOAD_US + n_pub * PUBLISH_US
    sess_len = pre + np.add.reduceat(advance, imp_first) + r.integers(1_000_000, 10_000_000, len(sess_user))
    # A user's k-th of n sessions lies in the k-th n-th of the day, and never past its end.
    width = US_PER_DAY // np.repeat(n_sess_u, n_sess_u)
    slack = (r.random(len(sess_user)) * np.maximum(width - sess_len, 0)).astype(np.int64)
    start = _within_group(n_sess_u) * width + slack
    sess_t0 = d0 + np.maximum(np.minimum(start, US_PER_DAY - 1 - sess_len), 0)
    imp_ts = (sess_t0 + pre - before[imp_first])[imp_sess] + before
    click_ts = imp_ts[clicked] + click_delay
    action_ts = click_ts[:, None] + (dwell[:, None] * 1000 * ACTION_AT).astype(np.int64)
    pub_sess = np.repeat(sess_first, n_pub_u)
    pub_ts = sess_t0[pub_sess] + LOAD_US + _within_group(n_pub_u) * PUBLISH_US + PUBLISH_US // 2
    # New users signed up just before their first session.
    new_first = sess_first[len(act) - n_new :]
    users.signup_us[n_old:] = np.maximum(sess_t0[new_first] - r.integers(5_000_000, 120_000_000, n_new), d0)

    shares = np.flatnonzero(actions[:, 2])
    visits = _offsite_visits(
        cfg, world, n_old, c_user[shares], c_item[shares], action_ts[shares, 2],
        d0 + US_PER_DAY - 1, rng["visits"],
    )  # fmt: skip
    joined = visits.user >= n_users  # visitors who signed up through the link, just before the visit
    signup_us = np.maximum(visits.t0[joined] - r.integers(5_000_000, 120_000_000, int(joined.sum())), d0)
    if len(signup_us):
        users.append(new_users(cfg, tax, len(signup_us), signup_us, rng["visits"]))
    n_users = len(users)
    user_first_session = np.full(n_users, -1, dtype=np.int64)
    user_first_session[act] = sess_first
    follows = np.flatnonzero(actions[:, 4])
    follows_table, edges = _follow_changes(
        world, cfg.unfollow_rate, c_user[follows], items.author[c_item[follows]].astype(np.int64),
        action_ts[follows, 4], user_first_session, sess_t0, sess_len, rng["follows"],
    )  # fmt: skip
    items.append(new_items(cfg, tax, users, sess_user[pub_sess], pub_ts, rng["publish"]))
    events = layout_events(
        SessionLayout(
            user=sess_user, t0=sess_t0, length=sess_len, n_imp=n_imp, n_publish=n_pub,
            imp_item=imp_item, imp_ts=imp_ts, imp_strategy=imp_strategy, imp_channel=imp_channel,
            clicked=clicked, click_ts=click_ts, dwell_ms=dwell,
            actions=actions, action_ts=action_ts,
            publish_item=np.arange(n_items_old, len(items)), publish_ts=pub_ts,
        ),
        visits,
    )  # fmt: skip

    # Carry the state: satisfaction (with the planted shift) and last activity of everyone active,
    # discovered interests, the day's clicks, new fans and comments received, follows.
    is_active = np.zeros(n_users, dtype=bool)
    is_active[act] = True
    is_active[visits.user] = True
    active = np.flatnonzero(is_active)
    rank = np.zeros(n_users, dtype=np.int64)
    rank[active] = np.arange(len(active))
    visit_item, no_visit = visits.item, np.zeros(len(visits.user), dtype=bool)
    seen_item = np.concatenate([imp_item, visit_item])
    sat_parts = bh.satisfaction_parts(
        cfg,
        rank,
        bh.is_new(users, cfg, dn, active),
        len(tax.l1_names),
        seen_user=np.concatenate([imp_user, visits.user]),
        seen_followed=np.concatenate([followed, no_visit]),
        seen_repeat=np.concatenate([repeats > 0, no_visit]),
        seen_low_quality=items.quality[seen_item] < cfg.low_quality_threshold,
        click_user=np.concatenate([c_user, visits.user]),
        click_aff=np.concatenate([c_aff, bh.affinity(users, items, visits.user, visit_item)]),
        click_l1=tax.l2_parent[items.l2[np.concatenate([c_item, visit_item])]],
    )
    base_sat = bh.satisfaction(sat_parts)  # of the active users, before the planted shift
    users.satisfaction[active] = base_sat
    if satisfaction_shift is not None:
        shift = np.asarray(satisfaction_shift(active.astype(np.int64) + 1, day), dtype=np.float64)
        if shift.shape != active.shape:
            raise ValueError(f"satisfaction_shift returned shape {shift.shape}, expected {active.shape}")
        users.satisfaction[active] = np.clip(base_sat + shift, 0.0, bh.SAT_MAX)
    users.last_active[active] = dn
    rate_today = bh.publish_rate(users, cfg, active, *world.recent_reactions(dn))  # window before today
    bh.discover(users, c_user, items.l2[c_item], cfg.discovery_rate)
    world.record_reactions(
        dn,
        new_fans=np.bincount(items.author[c_item[follows]], minlength=n_users),
        comments=np.bincount(items.author[c_item[actions[:, 3]]], minlength=n_users),
    )
    items.clicks = np.bincount(c_item, minlength=len(items)).astype(np.int32)
    world.follows = edges
    world.last_day = dn

    user_lo, item_lo = (0, 0) if day == cfg.start_date else (n_old, n_items_old)
    return_parts = bh.return_logit_parts(users, world.following_count(), cfg, dn + 1, base_sat, active)
    return DayOutput(
        day=day,
        tables={
            "users": tables.users_table(users, user_lo),
            "items": tables.items_table(items, tax, item_lo),
            "follows": follows_table,
            "events": tables.events_table(events, dn, cfg.experiment_buckets),
        },
        truth={
            "users": tables.truth_users_table(users, tax, user_lo),
            "items": tables.truth_items_table(items, item_lo),
            "user_days": tables.truth_user_days_table(
                active,
                users.satisfaction[active],
                users.satisfaction[active] - base_sat,
                return_parts,
                sat_parts,
                bh.discovered_count(users, active),
                rate_today,
            ),
        },
        dau=len(active),
    )
