"""The behaviour model: coefficients and the vectorised draws of one day (no I/O, no layout).

Formulas (docs/METHODS.md "Simulator levers"; `cfg` = SimulatorConfig):

- affinity(u, i) = (INTEREST_FLOOR + interest_u[l2(i)]) * (0.5 + quality_i), interest_u including the
  discovered dormant interests; clicks and every post-click action rise with it;
- logit P(click) = CLICK_BASE + CLICK_AFFINITY * affinity + CLICK_FOLLOWED * [author followed]
  - cfg.fatigue_effect * (earlier impressions of the item's category_l2 in the session);
- discovery: each click on an item of a dormant category of the user adds cfg.discovery_rate to that
  interest's weight (at most DISCOVERY_CAP), at the end of the day;
- satisfaction of an active day = 1 - exp(-max(raw, 0)), raw = the sum of the parts
  relevance = SAT_RELEVANCE * clicked affinity / items seen, variety = cfg.variety_effect * distinct l1
  categories clicked, followed = SAT_FOLLOWED * min(followed authors' impressions, 3), fatigue =
  -cfg.fatigue_effect * share of impressions repeating a category of the session, low_quality =
  -cfg.new_user_low_quality_penalty * share of items seen below cfg.low_quality_threshold (new users
  only); offsite visits count as an item seen and clicked; a planted shift is added after (clipped);
- logit P(active on d) = activity_u + [active on d-1] * (habit_effect + satisfaction_effect *
  (1 + [new on d-1] * new_user_satisfaction_boost) * (satisfaction(d-1) - 0.5))
  + follow_effect * log1p(authors followed); "new on d" = d - signup day < cfg.new_user_days;
- a creator's publishing rate on d = productivity * exp(fan_publish_effect * log1p(new fans) +
  comment_publish_effect * log1p(comments received)), both over d-7 .. d-1.
"""

from __future__ import annotations

import numpy as np

from tasks.core.config import SimulatorConfig
from tasks.simulator.world import DISCOVERY_CAP, INTEREST_SLOTS, US_PER_DAY, Items, Users, World, sigmoid

INTEREST_FLOOR = 0.05
CLICK_BASE, CLICK_AFFINITY, CLICK_FOLLOWED = -2.4, 3.5, 0.8
LIKE_BASE, LIKE_AFFINITY = -3.0, 2.0
FAVORITE_BASE, FAVORITE_AFFINITY = -4.5, 2.0
FOLLOW_BASE, FOLLOW_AFFINITY, FOLLOW_FANS = -6.0, 2.0, 0.25
SAT_RELEVANCE, SAT_FOLLOWED = 3.0, 0.3
SAT_MAX = np.nextafter(np.float32(1), np.float32(0))  # satisfaction lies in [0, SAT_MAX]
MAX_SESSIONS, MAX_IMPRESSIONS, MAX_PUBLISH = 8, 60, 5
DEFAULT_DURATION_MS = 20_000
VISIT_DELAY_MEAN_US = 2 * 3_600_000_000


def is_new(users: Users, cfg: SimulatorConfig, day: int, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Whether users[idx] are within cfg.new_user_days of signup on `day` (signup day = day 0)."""
    return day - users.signup_us[idx] // US_PER_DAY < cfg.new_user_days


def return_logit_parts(
    users: Users,
    following: np.ndarray,
    cfg: SimulatorConfig,
    day: int,
    base_satisfaction: np.ndarray,
    idx: np.ndarray | slice = slice(None),
) -> dict[str, np.ndarray]:
    """The additive parts (activity, habit, satisfaction, new_user, planted, follow) of logit
    P(active on `day`) of users[idx].

    `base_satisfaction` (aligned with idx) is their satisfaction of day-1 before the planted shift
    (users.satisfaction holds it after): "satisfaction" and "new_user" use the base, "planted" is the
    whole effect of the shift, so the parts sum to the logit.
    """
    yesterday = users.last_active[idx] == day - 1
    scale = yesterday * cfg.satisfaction_effect
    boost = cfg.new_user_satisfaction_boost * is_new(users, cfg, day - 1, idx)
    centred = base_satisfaction - 0.5
    return {
        "activity": users.activity[idx].astype(np.float64),
        "habit": yesterday * cfg.habit_effect,
        "satisfaction": scale * centred,
        "new_user": scale * boost * centred,
        "planted": scale * (1 + boost) * (users.satisfaction[idx] - base_satisfaction),
        "follow": cfg.follow_effect * np.log1p(following[idx]),
    }


def return_probability(users: Users, following: np.ndarray, cfg: SimulatorConfig, day: int) -> np.ndarray:
    """P(active on `day`) of every user: sigmoid of the sum of the return logit parts (for the users not
    active on day-1 only activity and follows count)."""
    logit = users.activity + cfg.follow_effect * np.log1p(following)
    was = np.flatnonzero(users.last_active == day - 1)
    logit[was] = sum(return_logit_parts(users, following, cfg, day, users.satisfaction[was], was).values())
    return sigmoid(logit)


def publish_rate(
    users: Users, cfg: SimulatorConfig, idx: np.ndarray, fans: np.ndarray, comments: np.ndarray
) -> np.ndarray:
    """Expected uploads of users[idx] on an active day: productivity times the boost of the recent new
    fans and comments received (per user, World.recent_reactions)."""
    rate = users.productivity[idx].astype(np.float64)
    creator = rate > 0
    fan_part = cfg.fan_publish_effect * np.log1p(fans[idx[creator]])
    rate[creator] *= np.exp(fan_part + cfg.comment_publish_effect * np.log1p(comments[idx[creator]]))
    return rate


def session_repeats(imp_sess: np.ndarray, l2: np.ndarray, n_l2: int) -> np.ndarray:
    """Per impression (session-major, feed order): earlier impressions of its category in its session."""
    key = imp_sess.astype(np.int64) * n_l2 + l2
    order = np.argsort(key, kind="stable")
    k = key[order]
    pos = np.arange(len(k))
    run_start = np.maximum.accumulate(np.where(np.r_[True, k[1:] != k[:-1]], pos, 0))
    out = np.empty(len(k), dtype=np.int32)
    out[order] = pos - run_start
    return out


def interest_weight(users: Users, user: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """Latent interest of user[i] in category l2[i] (0 outside the user's sparse interests)."""
    hit = users.interest_l2[user] == l2[:, None]
    return (users.interest_w[user] * hit).sum(axis=1)


def affinity(users: Users, items: Items, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Latent affinity of user[i] for item[i]: interest in its category times quality."""
    r = interest_weight(users, user, items.l2[item])
    return (INTEREST_FLOOR + r) * (0.5 + items.quality[item])


def click_probability(aff: np.ndarray, followed: np.ndarray, repeats: np.ndarray, fatigue: float) -> np.ndarray:
    """P(click) of each impression."""
    return sigmoid(CLICK_BASE + CLICK_AFFINITY * aff + CLICK_FOLLOWED * followed - fatigue * repeats)


def discover(users: Users, user: np.ndarray, l2: np.ndarray, rate: float) -> None:
    """Grow the dormant interests of user[i] clicked in category l2[i] by `rate` per click (capped)."""
    if rate == 0 or len(user) == 0:
        return
    dormant = users.interest_l2[user, INTEREST_SLOTS:]
    rows, slots = np.nonzero(dormant == l2[:, None])
    u, col = user[rows], INTEREST_SLOTS + slots
    np.add.at(users.interest_w, (u, col), np.float32(rate))
    users.interest_w[u, col] = np.minimum(users.interest_w[u, col], np.float32(DISCOVERY_CAP))


def discovered_count(users: Users, idx: np.ndarray) -> np.ndarray:
    """Dormant interests of users[idx] discovered so far (weight > 0)."""
    return (users.interest_w[idx, INTEREST_SLOTS:] > 0).sum(axis=1)


def post_click_actions(
    world: World,
    user: np.ndarray,
    item: np.ndarray,
    aff: np.ndarray,
    followed: np.ndarray,
    fans: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(clicks, 5) bool: like, favorite, share, comment, follow of each click.

    A follow needs an author other than the user, not yet followed, and is kept once per
    (user, author) and day (the first click that triggered it).
    """
    users, items = world.users, world.items
    author = items.author[item].astype(np.int64)
    n = len(item)
    u = rng.random((n, 5))
    act = np.empty((n, 5), dtype=bool)
    act[:, 0] = u[:, 0] < sigmoid(LIKE_BASE + LIKE_AFFINITY * aff)
    act[:, 1] = u[:, 1] < sigmoid(FAVORITE_BASE + FAVORITE_AFFINITY * aff)
    act[:, 2] = u[:, 2] < users.share_p[user] * (0.5 + aff)
    act[:, 3] = u[:, 3] < users.comment_p[user] * (0.5 + aff)
    p_follow = sigmoid(FOLLOW_BASE + FOLLOW_AFFINITY * aff + FOLLOW_FANS * np.log1p(fans[author]))
    follow = (u[:, 4] < p_follow) & (author != user) & ~followed
    rows = np.flatnonzero(follow)
    _, first = np.unique((user[rows].astype(np.int64) << 32) | author[rows], return_index=True)
    act[:, 4] = False
    act[rows[first], 4] = True
    return act


def dwell_ms(items: Items, item: np.ndarray, aff: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Watch time of each click: a completion share (rising with affinity) of the video length."""
    duration = items.duration_ms[item]
    duration = np.where(duration < 0, DEFAULT_DURATION_MS, duration)
    completion = np.clip(0.2 + 0.6 * np.minimum(aff, 1.0) + rng.normal(0.0, 0.25, len(item)), 0.05, 1.5)
    return (completion * duration).astype(np.int64)


def satisfaction_parts(
    cfg: SimulatorConfig,
    rank: np.ndarray,
    new_user: np.ndarray,
    n_l1: int,
    seen_user: np.ndarray,
    seen_followed: np.ndarray,
    seen_repeat: np.ndarray,
    seen_low_quality: np.ndarray,
    click_user: np.ndarray,
    click_aff: np.ndarray,
    click_l1: np.ndarray,
) -> dict[str, np.ndarray]:
    """The additive parts (relevance, variety, followed, fatigue, low_quality) of the raw satisfaction
    today (module docstring) of the active users, whose positions are `rank[user index]`
    (0 .. len(new_user)-1; new_user is aligned with them).

    Per item seen (impressions, then offsite visits, which also count as clicked): its user, whether
    its author is followed, whether it repeats a category of its session, whether it is low quality.
    """
    n = len(new_user)
    seen_at, click_at = rank[seen_user], rank[click_user]
    per_seen = 1.0 / np.maximum(np.bincount(seen_at, minlength=n), 1)
    repeated = np.bincount(seen_at[seen_repeat], minlength=n) * per_seen
    low_quality = np.bincount(seen_at[seen_low_quality], minlength=n) * per_seen * new_user
    relevance = np.bincount(click_at, weights=click_aff, minlength=n) * per_seen
    seen_l1 = np.zeros((n, n_l1), dtype=bool)
    seen_l1[click_at, click_l1] = True
    variety = seen_l1.sum(axis=1)
    followed = np.minimum(np.bincount(seen_at[seen_followed], minlength=n), 3)
    return {
        "relevance": SAT_RELEVANCE * relevance,
        "variety": cfg.variety_effect * variety,
        "followed": SAT_FOLLOWED * followed,
        "fatigue": -cfg.fatigue_effect * repeated,
        "low_quality": -cfg.new_user_low_quality_penalty * low_quality,
    }


def satisfaction(parts: dict[str, np.ndarray]) -> np.ndarray:
    """Satisfaction in [0, 1) from its raw parts: 1 - exp(-max(sum, 0))."""
    return np.minimum(1.0 - np.exp(-np.maximum(sum(parts.values()), 0.0)), SAT_MAX).astype(np.float32)
