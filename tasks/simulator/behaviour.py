"""The behaviour model: coefficients and the vectorised draws of one day (no I/O, no layout).

Affinity of user u for item i = (INTEREST_FLOOR + interest_u[l2(i)]) * (0.5 + quality_i); clicks and
every post-click action rise with it. Satisfaction of an active day (in [0, 1)) grows with the
relevance of what was clicked per impression, the variety of categories clicked and the followed
authors seen; it moves the next day's return logit by `satisfaction_effect * (sat - 0.5)`.
"""

from __future__ import annotations

import numpy as np

from tasks.core.config import SimulatorConfig
from tasks.simulator.world import Items, Users, World, sigmoid

INTEREST_FLOOR = 0.05
CLICK_BASE, CLICK_AFFINITY, CLICK_FOLLOWED = -2.4, 3.5, 0.8
LIKE_BASE, LIKE_AFFINITY = -3.0, 2.0
FAVORITE_BASE, FAVORITE_AFFINITY = -4.5, 2.0
FOLLOW_BASE, FOLLOW_AFFINITY, FOLLOW_FANS = -6.0, 2.0, 0.25
SAT_RELEVANCE, SAT_VARIETY, SAT_FOLLOWED = 3.0, 0.25, 0.3
MAX_SESSIONS, MAX_IMPRESSIONS, MAX_PUBLISH = 8, 60, 5
DEFAULT_DURATION_MS = 20_000
VISIT_DELAY_MEAN_US = 2 * 3_600_000_000


def return_probability(users: Users, following: np.ndarray, cfg: SimulatorConfig, day: int) -> np.ndarray:
    """P(active on `day`) of every user: base activity, habit and satisfaction of day-1, follows."""
    yesterday = users.last_active == day - 1
    logit = (
        users.activity
        + yesterday * (cfg.habit_effect + cfg.satisfaction_effect * (users.satisfaction - 0.5))
        + cfg.follow_effect * np.log1p(following)
    )
    return sigmoid(logit)


def interest_weight(users: Users, user: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """Latent interest of user[i] in category l2[i] (0 outside the user's sparse interests)."""
    hit = users.interest_l2[user] == l2[:, None]
    return (users.interest_w[user] * hit).sum(axis=1)


def affinity(users: Users, items: Items, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Latent affinity of user[i] for item[i]: interest in its category times quality."""
    r = interest_weight(users, user, items.l2[item])
    return (INTEREST_FLOOR + r) * (0.5 + items.quality[item])


def clicks(aff: np.ndarray, followed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which impressions are clicked."""
    return rng.random(len(aff)) < sigmoid(CLICK_BASE + CLICK_AFFINITY * aff + CLICK_FOLLOWED * followed)


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


def satisfaction(
    n_users: int,
    n_l1: int,
    seen_user: np.ndarray,
    seen_followed: np.ndarray,
    click_user: np.ndarray,
    click_aff: np.ndarray,
    click_l1: np.ndarray,
) -> np.ndarray:
    """Satisfaction of each user today, in [0, 1):

    1 - exp(-(SAT_RELEVANCE * sum of clicked affinity / impressions
              + SAT_VARIETY * distinct l1 categories clicked
              + SAT_FOLLOWED * min(impressions of followed authors, 3))).
    Offsite visits count as a seen and clicked item.
    """
    seen = np.bincount(seen_user, minlength=n_users)
    relevance = np.bincount(click_user, weights=click_aff, minlength=n_users) / np.maximum(seen, 1)
    clickers = np.flatnonzero(np.bincount(click_user, minlength=n_users))
    rank = np.zeros(n_users, dtype=np.int64)
    rank[clickers] = np.arange(len(clickers))
    seen_l1 = np.zeros((len(clickers), n_l1), dtype=bool)
    seen_l1[rank[click_user], click_l1] = True
    variety = np.zeros(n_users, dtype=np.int64)
    variety[clickers] = seen_l1.sum(axis=1)
    followed = np.minimum(np.bincount(seen_user, weights=seen_followed, minlength=n_users), 3)
    raw = SAT_RELEVANCE * relevance + SAT_VARIETY * variety + SAT_FOLLOWED * followed
    return (1.0 - np.exp(-raw)).astype(np.float32)
