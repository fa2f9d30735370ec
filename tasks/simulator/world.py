"""The simulator's latent world: taxonomy, users, items and the follow graph, and how they grow.

Ids are positional: user_id = user index + 1, item_id = item index + 1 (indices grow in creation
order, so an id never changes). The follow graph is a sorted array of edge keys
`follower_index << 32 | author_index`.

Interests: columns 0 .. INTEREST_SLOTS-1 of `interest_l2` / `interest_w` are the initial interests
(weights sum to 1); the last DORMANT_SLOTS columns are dormant categories, distinct from the initial
ones and drawn uniformly, with weight 0 until clicks on them grow it (behaviour.discover).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

import numpy as np

from tasks.core.config import SimulatorConfig
from tasks.core.contract import AGE_BUCKETS, GENDERS
from tasks.core.hashing import splitmix64

US_PER_DAY = 86_400_000_000
EPOCH = dt.date(1970, 1, 1)
INTEREST_SLOTS = 5  # at most this many categories carry a user's initial interest (sparse Dirichlet)
DORMANT_SLOTS = 3  # latent interests a user has not discovered yet (weight 0 until clicked)
DISCOVERY_CAP = 0.5  # the weight a discovered interest grows to at most
PUBLISH_WINDOW_DAYS = 7  # new fans and comments received count over this many days
COUNTRIES: tuple[str, ...] = ("US", "BR", "IN", "ID", "MX", "PH", "DE", "GB", "FR", "JP", "KR", "TR")
_L1_NAMES = (
    "comedy", "music", "dance", "food", "travel", "gaming", "sports", "beauty", "fashion", "pets",
    "education", "tech", "news", "film", "cars", "fitness", "diy", "parenting", "art", "science",
)  # fmt: skip
_GENDER_P = (0.47, 0.45, 0.08)
_AGE_P = (0.12, 0.30, 0.27, 0.15, 0.10, 0.06)
_TIER_P = (0.15, 0.25, 0.25, 0.20, 0.15)
_COUNTRY_P = (0.25, 0.15, 0.15, 0.1, 0.08, 0.06, 0.05, 0.05, 0.04, 0.03, 0.02, 0.02)
_COUNTRY_NULL_P = 0.05
_INITIAL_SIGNUP_DAYS = 365  # the initial user base signed up over this many days before the start
_INITIAL_CATALOGUE_DAYS = 90  # the initial catalogue was published over this many days
_EXPIRING_SHARE = 0.1  # items with an expire_ts, 7..60 days after publishing
_NULL_DURATION_SHARE = 0.005
_HOME_CATEGORY_SHARE = 0.7  # a creator publishes in their top interest category this often
_SHARE_RATE = 0.03  # mean share probability per click
_COMMENT_RATE = 0.02  # mean comment probability per click
_KOL_SHARE_BOOST = 10.0  # KOLs share much more often
_KOL_ACTIVITY_BOOST = 3.0  # ... and are regulars (activity logit): a KOL is someone whose shares are seen


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01 (the high bits of event and session ids)."""
    return (day - EPOCH).days


def day_start_us(day: dt.date) -> int:
    """Microseconds since the epoch at 00:00 UTC of `day`."""
    return day_number(day) * US_PER_DAY


def experiment_bucket_index(user_ids: np.ndarray, n_buckets: int) -> np.ndarray:
    """Stable bucket of each user id: splitmix64(user_id) mod n_buckets (independent of the seed)."""
    return (splitmix64(user_ids, 0x9E3779B97F4A7C15) % np.uint64(n_buckets)).astype(np.int32)


@dataclass(frozen=True)
class Taxonomy:
    """Categories and content clusters, derived from the config and seed (never persisted)."""

    l1_names: tuple[str, ...]
    l2_names: tuple[str, ...]
    l2_parent: np.ndarray  # l1 index of each l2
    cluster_first: np.ndarray  # first content cluster of each l2 (clusters nest in l2)
    cluster_count: np.ndarray  # number of clusters of each l2
    l2_popularity: np.ndarray  # global share of each l2
    segment_prior: np.ndarray  # (gender * age segment, l2): interest prior of each demographic segment

    @property
    def n_l2(self) -> int:
        return len(self.l2_names)

    @classmethod
    def build(cls, cfg: SimulatorConfig) -> "Taxonomy":
        """The taxonomy of `cfg`: names, nesting and popularity priors (deterministic in the seed)."""
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        l1 = tuple(
            _L1_NAMES[i] if i < len(_L1_NAMES) else f"topic{i:02d}" for i in range(cfg.categories_l1)
        )
        per = cfg.categories_l2_per_l1
        l2 = tuple(f"{name}_{j + 1:02d}" for name in l1 for j in range(per))
        n_l2 = len(l2)
        bounds = np.arange(n_l2 + 1, dtype=np.int64) * cfg.content_clusters // n_l2
        popularity = rng.dirichlet(np.full(n_l2, 2.0))
        tilt = rng.lognormal(0.0, 0.8, size=(len(GENDERS) * len(AGE_BUCKETS), n_l2))
        prior = popularity * tilt
        return cls(
            l1_names=l1,
            l2_names=l2,
            l2_parent=np.repeat(np.arange(len(l1), dtype=np.int16), per),
            cluster_first=bounds[:-1].astype(np.int32),
            cluster_count=np.diff(bounds).astype(np.int32),
            l2_popularity=popularity,
            segment_prior=prior / prior.sum(axis=1, keepdims=True),
        )


class _Columns:
    """A dataclass of equally long numpy columns that can grow by appending rows."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def append(self, other: "_Columns") -> None:
        for f in fields(self):
            setattr(self, f.name, np.concatenate([getattr(self, f.name), getattr(other, f.name)]))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "_Columns":
        return cls(**{f.name: arrays[prefix + f.name] for f in fields(cls)})


@dataclass
class Users(_Columns):
    """Per-user columns: contract attributes, latent traits and the carried daily state."""

    signup_us: np.ndarray  # int64, microseconds since the epoch
    gender: np.ndarray  # int8 index into GENDERS
    age: np.ndarray  # int8 index into AGE_BUCKETS
    city_tier: np.ndarray  # int8, 1..5
    country: np.ndarray  # int8 index into COUNTRIES, -1 = null
    activity: np.ndarray  # float32 logit of the base daily activity
    depth: np.ndarray  # float32 multiplier of impressions per session
    interest_l2: np.ndarray  # int16 (n, INTEREST_SLOTS + DORMANT_SLOTS) l2 index; initial by descending weight,
    # then the dormant ones (-1 = none)
    interest_w: np.ndarray  # float32 (n, INTEREST_SLOTS + DORMANT_SLOTS): initial sum to 1, dormant start at 0
    is_creator: np.ndarray  # bool
    is_kol: np.ndarray  # bool
    share_p: np.ndarray  # float32 share probability per click
    comment_p: np.ndarray  # float32 comment probability per click
    productivity: np.ndarray  # float32 items per active day (creators; 0 otherwise)
    skill: np.ndarray  # float32 author quality logit
    satisfaction: np.ndarray  # float32 satisfaction of the last active day
    last_active: np.ndarray  # int32 day_number of the last active day, -1 = never


@dataclass
class Items(_Columns):
    """Per-item columns: contract attributes, latent quality and yesterday's clicks."""

    author: np.ndarray  # int32 user index
    l2: np.ndarray  # int16 l2 index
    cluster: np.ndarray  # int32 content cluster
    quality: np.ndarray  # float32 in (0, 1)
    duration_ms: np.ndarray  # int64, -1 = null
    publish_us: np.ndarray  # int64
    expire_us: np.ndarray  # int64, -1 = never
    clicks: np.ndarray  # int32 clicks on the last simulated day


@dataclass
class World:
    """Everything carried from one day to the next (see state.py for persistence)."""

    users: Users
    items: Items
    follows: np.ndarray  # sorted unique int64 edge keys follower << 32 | author
    last_day: int  # day_number of the last simulated day (start - 1 before the first day)
    # int64 (k, 4) rows (day_number, user index, new fans, comments received on own items) of the last
    # PUBLISH_WINDOW_DAYS simulated days, users with any only
    reactions: np.ndarray

    def following_count(self) -> np.ndarray:
        """Authors each user follows."""
        return np.bincount(self.follows >> 32, minlength=len(self.users))

    def fan_count(self) -> np.ndarray:
        """Followers of each user (as an author)."""
        return np.bincount(self.follows & 0xFFFFFFFF, minlength=len(self.users))

    def recent_reactions(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """New fans and comments received of each user over the PUBLISH_WINDOW_DAYS days before `day`."""
        r = self.reactions[self.reactions[:, 0] >= day - PUBLISH_WINDOW_DAYS]
        n = len(self.users)
        return np.bincount(r[:, 1], r[:, 2], minlength=n), np.bincount(r[:, 1], r[:, 3], minlength=n)

    def record_reactions(self, day: int, new_fans: np.ndarray, comments: np.ndarray) -> None:
        """Add `day`'s new fans and comments received (per user) and drop the days out of the window."""
        who = np.flatnonzero((new_fans > 0) | (comments > 0))
        today = np.column_stack([np.full(len(who), day), who, new_fans[who], comments[who]]).astype(np.int64)
        kept = self.reactions[self.reactions[:, 0] > day - PUBLISH_WINDOW_DAYS]
        self.reactions = np.concatenate([kept, today])

    def is_following(self, user: np.ndarray, author: np.ndarray) -> np.ndarray:
        """Whether user[i] follows author[i] (indices)."""
        keys = (user.astype(np.int64) << 32) | author.astype(np.int64)
        if len(self.follows) == 0:
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(np.searchsorted(self.follows, keys), len(self.follows) - 1)
        return self.follows[pos] == keys


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def weighted_choice(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` indices drawn with replacement, proportionally to `weights` (>= 0, not all 0)."""
    cum = np.cumsum(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], side="right"), len(cum) - 1)


def _pick(rng: np.random.Generator, p: tuple[float, ...], n: int) -> np.ndarray:
    return weighted_choice(np.array(p), n, rng).astype(np.int8)


def _sparse_interests(
    tax: Taxonomy, segment: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse interests: 1..INTEREST_SLOTS draws from the segment prior, Dirichlet(1) weights.

    A category drawn twice counts once. Returns (category, weight) per slot, by descending weight;
    unused slots have weight 0.
    """
    n, k, n_l2 = len(segment), INTEREST_SLOTS, tax.n_l2
    cdf = np.cumsum(tax.segment_prior, axis=1)
    flat = (cdf / cdf[:, -1:] + np.arange(len(cdf))[:, None]).ravel()  # one increasing array
    seg = segment.astype(np.int64)[:, None]
    idx = np.searchsorted(flat, seg + rng.random((n, k)), side="right") - seg * n_l2
    idx = np.minimum(idx, n_l2 - 1)
    used = np.arange(k) < 1 + rng.binomial(k - 1, 0.4, size=(n, 1))
    w = rng.standard_exponential((n, k), dtype=np.float32) * used
    # Duplicates: keep the first used slot of each category (used slots sort first).
    order = np.argsort(idx * 2 + ~used, axis=1)
    idx, w = np.take_along_axis(idx, order, axis=1), np.take_along_axis(w, order, axis=1)
    w[:, 1:][idx[:, 1:] == idx[:, :-1]] = 0
    w /= w.sum(axis=1, keepdims=True)
    order = np.argsort(-w, axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int16), np.take_along_axis(w, order, axis=1)


def _dormant_interests(n_l2: int, initial: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DORMANT_SLOTS categories per user, drawn uniformly without replacement among the categories
    not in `initial` (-1 there = unused slot); -1 when none is left."""
    n = len(initial)
    free = n_l2 - (initial >= 0).sum(axis=1)
    # Positions among the free categories, without replacement: step over the earlier draws ascending.
    pos = np.zeros((n, DORMANT_SLOTS), dtype=np.int64)
    for j in range(DORMANT_SLOTS):
        c = (rng.random(n) * np.maximum(free - j, 0)).astype(np.int64)
        for earlier in np.sort(pos[:, :j], axis=1).T:
            c += c >= earlier
        pos[:, j] = c
    # The free category at each position: step over the taken ones ascending (n_l2 = unused slot).
    for taken in np.sort(np.where(initial >= 0, initial, n_l2), axis=1).T:
        pos += pos >= taken[:, None]
    return np.where(np.arange(DORMANT_SLOTS) < free[:, None], pos, -1).astype(np.int16)


def new_users(
    cfg: SimulatorConfig, tax: Taxonomy, n: int, signup_us: np.ndarray, rng: np.random.Generator
) -> Users:
    """`n` freshly drawn users who signed up at `signup_us`."""
    gender = _pick(rng, _GENDER_P, n)
    age = _pick(rng, _AGE_P, n)
    country = _pick(rng, _COUNTRY_P, n)
    country[rng.random(n) < _COUNTRY_NULL_P] = -1
    interest_l2, interest_w = _sparse_interests(tax, gender.astype(np.int64) * len(AGE_BUCKETS) + age, rng)
    used_l2 = np.where(interest_w > 0, interest_l2, -1).astype(np.int16)
    interest_l2 = np.concatenate([interest_l2, _dormant_interests(tax.n_l2, used_l2, rng)], axis=1)
    interest_w = np.concatenate([interest_w, np.zeros((n, DORMANT_SLOTS), dtype=np.float32)], axis=1)
    is_creator = rng.random(n) < cfg.creator_share
    is_kol = rng.random(n) < cfg.kol_share
    share_boost = np.where(is_kol, _KOL_SHARE_BOOST, 1.0)
    share_p = np.clip(_SHARE_RATE * rng.lognormal(-0.5, 1.0, n) * share_boost, 0, 0.5)
    productivity = np.where(is_creator, cfg.publish_rate * rng.lognormal(-0.5, 1.0, n), 0.0)
    return Users(
        signup_us=signup_us.astype(np.int64),
        gender=gender,
        age=age,
        city_tier=(1 + _pick(rng, _TIER_P, n)).astype(np.int8),
        country=country,
        activity=(rng.normal(cfg.activity_logit_mean, cfg.activity_logit_sd, n) + _KOL_ACTIVITY_BOOST * is_kol).astype(
            np.float32
        ),
        depth=rng.lognormal(-0.125, 0.5, n).astype(np.float32),
        interest_l2=interest_l2,
        interest_w=interest_w,
        is_creator=is_creator,
        is_kol=is_kol,
        share_p=share_p.astype(np.float32),
        comment_p=np.clip(_COMMENT_RATE * rng.lognormal(-0.5, 1.0, n), 0, 0.5).astype(np.float32),
        productivity=productivity.astype(np.float32),
        skill=rng.normal(0.0, 0.8, n).astype(np.float32),
        satisfaction=np.zeros(n, dtype=np.float32),
        last_active=np.full(n, -1, dtype=np.int32),
    )


def new_items(
    cfg: SimulatorConfig,
    tax: Taxonomy,
    users: Users,
    author: np.ndarray,
    publish_us: np.ndarray,
    rng: np.random.Generator,
) -> Items:
    """Items by `author` (user indices) published at `publish_us`: mostly in the author's home category."""
    n = len(author)
    home = users.interest_l2[author, 0]
    other = weighted_choice(tax.l2_popularity, n, rng)
    l2 = np.where(rng.random(n) < _HOME_CATEGORY_SHARE, home, other).astype(np.int16)
    cluster = tax.cluster_first[l2] + (rng.random(n) * tax.cluster_count[l2]).astype(np.int32)
    quality = sigmoid(users.skill[author] + rng.normal(0.0, 0.7, n))
    duration = np.clip(rng.lognormal(np.log(25_000), 0.8, n), 3_000, 600_000).astype(np.int64)
    duration[rng.random(n) < _NULL_DURATION_SHARE] = -1
    expiring = rng.random(n) < _EXPIRING_SHARE
    lifetime = ((7 + 53 * rng.random(n)) * US_PER_DAY).astype(np.int64)
    return Items(
        author=author.astype(np.int32),
        l2=l2,
        cluster=cluster.astype(np.int32),
        quality=quality.astype(np.float32),
        duration_ms=duration,
        publish_us=publish_us.astype(np.int64),
        expire_us=np.where(expiring, publish_us + lifetime, -1).astype(np.int64),
        clicks=np.zeros(n, dtype=np.int32),
    )


def initial_world(cfg: SimulatorConfig, tax: Taxonomy) -> World:
    """The user base and catalogue that exist before the start date (no follows yet)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    start = day_start_us(cfg.start_date)
    # Signups skewed toward recent days (the app grows); at least one creator publishes.
    age_days = _INITIAL_SIGNUP_DAYS * rng.random(cfg.users) ** 1.5
    users = new_users(cfg, tax, cfg.users, start - (age_days * US_PER_DAY).astype(np.int64) - 1, rng)
    if not users.is_creator.any():
        users.is_creator[int(rng.integers(cfg.users))] = True
    creators = np.flatnonzero(users.is_creator)
    author = creators[weighted_choice(users.productivity[creators] + 1e-3, cfg.items, rng)]
    earliest = np.maximum(users.signup_us[author], start - _INITIAL_CATALOGUE_DAYS * US_PER_DAY)
    publish = earliest + ((start - 1 - earliest) * rng.random(cfg.items) ** 0.7).astype(np.int64)
    items = new_items(cfg, tax, users, author, publish, rng)
    # Start near the steady state: the stationary share of a two-state (active or not) chain.
    p_cold, p_warm = sigmoid(users.activity), sigmoid(users.activity + cfg.habit_effect)
    was_active = rng.random(cfg.users) < p_cold / (1.0 - p_warm + p_cold)
    users.last_active[was_active] = day_number(cfg.start_date) - 1
    users.satisfaction[was_active] = 0.5
    return World(
        users,
        items,
        follows=np.empty(0, dtype=np.int64),
        last_day=day_number(cfg.start_date) - 1,
        reactions=np.empty((0, 4), dtype=np.int64),
    )
