"""What the recommendation path serves from (docs/METHODS.md "Recommendation path"): the artifacts
current at the start of a day — registry versions of the two-tower, ItemCF, Swing, pre-ranker and
full ranker (and the special-group models), the pools' current members, the ANN indexes — and the
warehouse facts the funnel needs about users and items as of the end of the day before.

Loading is fail-open: a piece whose artifact is missing or unreadable is recorded in `broken`
(name -> reason) and the channels or stages that need it are skipped; `load_context` raises one
data-quality alert naming them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from models.common.features import gather, item_features, lookup
from models.common.tables import Catalogue, Events, UserTable
from models.ranking.full import FullRanking
from models.ranking.full import load_model as load_full
from models.ranking.pre import PreRanker
from models.ranking.pre import load_model as load_pre
from models.retrieval import ann
from models.retrieval.cf_channels import U2A2A2I, U2A2I, U2U2I
from models.retrieval.i2i import U2I2I
from models.retrieval.retriever import Popularity, Retriever
from models.retrieval.two_tower_retriever import TwoTowerRetriever
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.core.warehouse import table_names
from tasks.ops.alerts import Alert, raise_alert
from tasks.ranking import full as full_ranking
from tasks.ranking import pre as preranking
from tasks.ranking import special_groups
from tasks.retrieval import ann_refresh, i2i
from tasks.retrieval import two_tower as two_tower_training
from tasks.retrieval.data import connect_read, load_catalogue, load_events, load_follows, load_implicit_follows

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class UserRuns:
    """Events grouped by user (CSR): the items of user `users[r]` are `items[starts[r]:ends[r]]`, in
    the order the runs were built with."""

    users: np.ndarray  # sorted distinct user ids
    starts: np.ndarray
    ends: np.ndarray
    items: np.ndarray  # catalogue rows

    def bounds(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of each user's run; an empty run for a user without events."""
        pos, known = lookup(user_ids, self.users)
        return np.where(known, self.starts[pos], 0), np.where(known, self.ends[pos], 0)

    def latest(self, user_ids: np.ndarray, length: int) -> np.ndarray:
        """(len(user_ids), length) the last `length` items of each run, last first, -1 padded."""
        starts, ends = self.bounds(user_ids)
        return gather(self.items, ends, starts, length)


def user_runs(events: Events, order: np.ndarray) -> UserRuns:
    """The runs of `events` taken in `order` (which must group them by user, ascending)."""
    users, starts, counts = np.unique(events.user_id[order], return_index=True, return_counts=True)
    return UserRuns(users, starts, starts + counts, events.item[order])


@dataclass(frozen=True)
class SeenRows:
    """The seen filter of every user with history (docs/METHODS.md "Recommendation path"): row r of
    `matrix` (binary CSR, sorted indices) holds the items of user `users[r]`."""

    users: np.ndarray  # sorted
    matrix: sp.csr_matrix


@dataclass(frozen=True)
class RankerTables:
    """Per catalogue row: the item feature rows of a ranker's vocabularies (`items`), and for the
    pre-ranker its item-tower vectors (`vectors`, None for the full ranker)."""

    items: np.ndarray  # (n_items, 5) int64
    vectors: np.ndarray | None  # (n_items, d) float32


@dataclass
class ServingContext:
    """Everything one day's feeds are computed from; `day` is the last day of data (feeds are for
    the day after). Item facts are per catalogue row."""

    cfg: PlatformConfig
    day: dt.date
    catalogue: Catalogue
    users: UserTable
    clicks: Events  # positives of the retrieval window through `day` (history, seeds, sequences)
    impressions: Events  # of the seen-filter window through `day`
    segments: dict[int, tuple[str, ...]]  # user -> segments on their latest active day of the window
    follows_per_user: dict[int, int]
    fans: np.ndarray  # per catalogue row: the author's followers
    comments: np.ndarray  # per catalogue row: comments received so far
    kol_score: dict[int, float]
    quality: np.ndarray  # per catalogue row: smoothed click-through rate over the window
    expired: np.ndarray  # per catalogue row: expired by the start of the served day
    pools: dict[str, dict[str, np.ndarray]]  # pool -> segment ("all" or a segment) -> catalogue rows by rank
    item_vectors: np.ndarray | None  # (n_items, d) L2-normalised (the two-tower's), for diversity
    retrievers: dict[str, Retriever] = field(default_factory=dict)  # channel kind -> fitted retriever
    indexes: dict[str, Any] = field(default_factory=dict)  # pool -> the two-tower's faiss index of its items
    two_tower: TwoTowerRetriever | None = None
    pre: tuple[PreRanker, dict, artifacts.Version] | None = None
    full: tuple[FullRanking, dict, artifacts.Version] | None = None
    residual: artifacts.Version | None = None
    calibrator: artifacts.Version | None = None
    broken: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # what served: model -> version

    def user_segments(self, user_id: int) -> tuple[str, ...]:
        return self.segments.get(int(user_id), ())

    def has_history(self, user_ids: np.ndarray) -> np.ndarray:
        """Whether each user has a positive in the window."""
        return lookup(np.asarray(user_ids, dtype=np.int64), self.click_runs.users)[1]

    # Indexes derived once from the facts above (built by `prepare`, or on first use) --------------
    @cached_property
    def serve_start_us(self) -> int:
        """The start of the served day (`day` + 1), microseconds since the epoch."""
        day = self.day + dt.timedelta(days=1)
        return int((dt.datetime.combine(day, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds()) * 1_000_000

    @cached_property
    def click_runs(self) -> UserRuns:
        """The positives by user, in their time order (as `models.common.features.latest_sequences`)."""
        return user_runs(self.clicks, np.argsort(self.clicks.user_id, kind="stable"))

    @cached_property
    def recent_first_runs(self) -> UserRuns:
        """The positives by user, most recent first (ties: in their order)."""
        return user_runs(self.clicks, np.lexsort((-self.clicks.ts_us, self.clicks.user_id)))

    @cached_property
    def pre_runs(self) -> UserRuns:
        """The pre-ranker's sequences: positives of the days before the served day, by user, in order."""
        before = self.clicks.select(self.clicks.day < np.datetime64(self.day + dt.timedelta(days=1), "D"))
        return user_runs(before, np.argsort(before.user_id, kind="stable"))

    @cached_property
    def full_runs(self) -> UserRuns:
        """The full ranker's sequences: positives strictly before the served day's start, by (user, time)
        (as `models.ranking.features.behaviour_sequences` at that time)."""
        before = self.clicks.select(self.clicks.ts_us < self.serve_start_us)
        return user_runs(before, np.lexsort((before.ts_us, before.user_id)))

    @cached_property
    def seen(self) -> SeenRows:
        """Items shown in the seen-filter window or with a positive in the retrieval window, per user."""
        first = np.datetime64(self.day - dt.timedelta(days=self.cfg.serving.seen_window_days - 1))
        shown = self.impressions.select(self.impressions.day >= first)
        user_id = np.concatenate([shown.user_id, self.clicks.user_id])
        users, rows = np.unique(user_id, return_inverse=True)
        m = sp.csr_matrix((np.ones(len(user_id)), (rows, np.concatenate([shown.item, self.clicks.item]))),
                          shape=(len(users), len(self.catalogue)))
        m.sum_duplicates()
        m.data[:] = 1.0
        return SeenRows(users, m)

    @cached_property
    def follow_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """`follows_per_user` as (sorted user ids, counts)."""
        return _sorted_items(self.follows_per_user)

    @cached_property
    def kol_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """`kol_score` as (sorted user ids, scores)."""
        return _sorted_items(self.kol_score)

    @cached_property
    def pre_tables(self) -> RankerTables | None:
        """The pre-ranker's item rows and item-tower vectors of the whole catalogue (None without it)."""
        if self.pre is None:
            return None
        model, vocabs, _ = self.pre
        items = item_features(vocabs, self.catalogue)
        with torch.no_grad():
            vectors = model.eval().encode_items(torch.from_numpy(items)).numpy()
        return RankerTables(items, vectors)

    @cached_property
    def full_tables(self) -> RankerTables | None:
        """The full ranker's item rows of the catalogue, row 0 the padding row (None without it)."""
        if self.full is None:
            return None
        return RankerTables(np.vstack([np.zeros((1, 5), np.int64), item_features(self.full[1], self.catalogue)]), None)

    def prepare(self) -> ServingContext:
        """Build every derived index now (not on the first request); returns self."""
        for name in ("click_runs", "recent_first_runs", "pre_runs", "full_runs", "seen", "follow_counts",
                     "kol_scores", "pre_tables", "full_tables"):
            getattr(self, name)
        return self


def _sorted_items(values: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
    out = np.fromiter(values.values(), dtype=np.float64, count=len(values))
    order = np.argsort(ids)
    return ids[order], out[order]


def per_user(table: tuple[np.ndarray, np.ndarray], user_ids: np.ndarray) -> np.ndarray:
    """The value of each user in a (sorted ids, values) table, 0 for a user not in it."""
    pos, known = lookup(user_ids, table[0])
    return np.where(known, table[1][pos], 0.0) if len(table[0]) else np.zeros(len(user_ids))


def _attempt(broken: dict[str, str], name: str, load: Callable[[], T]) -> T | None:
    """load(), or None with the reason recorded under `name` (fail-open)."""
    try:
        return load()
    except Exception as e:  # a missing or corrupt artifact of any kind: serve without it
        broken[name] = f"{type(e).__name__}: {e}"
        log.warning("serving without %s: %s", name, broken[name])
        return None


def _current(cfg: PlatformConfig, model: str) -> artifacts.Version:
    return artifacts.require_current(registry.model_store(cfg, model))


def _segments(con: Any, day: dt.date, days: int) -> dict[int, tuple[str, ...]]:
    if "int_user_day_segments" not in table_names(con):
        return {}
    df = con.execute(
        """
        with recent as (
            select user_id, day, segment from int_user_day_segments where day between ? and ?
            qualify day = max(day) over (partition by user_id)
        )
        select user_id, list(segment order by segment) as segments from recent group by user_id
        """, [day - dt.timedelta(days=days - 1), day]).df()
    return {int(u): tuple(s) for u, s in zip(df.user_id, df.segments)}


def _pools(con: Any, catalogue: Catalogue) -> dict[str, dict[str, np.ndarray]]:
    if "pool_current_members" not in table_names(con):
        return {}
    df = con.execute("select pool, segment, item_id from pool_current_members order by pool, segment, rank").df()
    df = df[np.isin(df.item_id.to_numpy(np.int64), catalogue.item_id)]
    out: dict[str, dict[str, np.ndarray]] = {}
    for (pool, segment), g in df.groupby(["pool", "segment"], sort=False):
        out.setdefault(pool, {})[segment] = catalogue.index(g.item_id.to_numpy(np.int64))
    return out


def _per_item(con: Any, catalogue: Catalogue, sql: str, params: list) -> np.ndarray:
    df = con.execute(sql, params).df()
    out = np.zeros(len(catalogue))
    pos, known = lookup(df.iloc[:, 0].to_numpy(np.int64), catalogue.item_id)
    out[pos[known]] = df.iloc[:, 1].to_numpy(np.float64)[known]
    return out


def _quality(clicks: Events, impressions: Events, n_items: int, prior_weight: float) -> np.ndarray:
    """(clicks + m·r0) / (impressions + m) per item, r0 the overall click-through rate."""
    c = np.bincount(clicks.item, minlength=n_items).astype(np.float64)
    i = np.bincount(impressions.item, minlength=n_items).astype(np.float64)
    r0 = c.sum() / max(i.sum(), 1.0)
    return (c + prior_weight * r0) / (i + prior_weight)


def last_data_day(cfg: PlatformConfig) -> dt.date:
    """The latest day with events in the warehouse."""
    with connect_read(cfg) as con:
        day = con.execute("select max(dt) from raw.events").fetchone()[0]
    if day is None:
        raise ValueError("no events loaded yet: nothing to serve from")
    return day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])


def load_context(cfg: PlatformConfig, day: dt.date) -> ServingContext:
    """The serving context of the feeds for day + 1, from the artifacts current now and the
    warehouse through `day`; raises one data-quality alert naming whatever could not be loaded."""
    s = cfg.serving
    window_first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    seen_first = day - dt.timedelta(days=max(s.seen_window_days, s.quality_window_days) - 1)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        users = two_tower_training.load_users(con, day)
        clicks = load_events(con, catalogue, cfg.retrieval.positive_event, window_first, day)
        impressions = load_events(con, catalogue, "impression", seen_first, day)
        segments = _segments(con, day, s.returning_days)
        follows = load_follows(con, day)
        implicit = load_implicit_follows(con, day)
        fans_by_author = pd.Series(follows[0]).groupby(follows[1]).size()
        fans = fans_by_author.reindex(catalogue.author_id, fill_value=0).to_numpy(np.float64)
        comments = _per_item(con, catalogue, "select item_id, count(*) from raw.events where event_type = 'comment' "
                             "and dt <= ? and item_id is not null group by 1", [day])
        kol = ({} if "kol_scores" not in table_names(con) else dict(con.execute(
            "select user_id, kol_score from kol_scores where day = (select max(day) from kol_scores where day <= ?)",
            [day]).fetchall()))
        pools = _pools(con, catalogue)
        expired = _per_item(con, catalogue, "select item_id, 1.0 from raw.items where expire_ts is not null "
                            "and expire_ts <= ? qualify row_number() over (partition by item_id order by dt desc) = 1",
                            [day + dt.timedelta(days=1)]) > 0
    quality_first = np.datetime64(day - dt.timedelta(days=s.quality_window_days - 1))
    quality = _quality(clicks.select(clicks.day >= quality_first), impressions.select(impressions.day >= quality_first),
                       len(catalogue), s.quality_prior_weight)
    ctx = ServingContext(
        cfg=cfg, day=day, catalogue=catalogue, users=users, clicks=clicks, impressions=impressions,
        segments=segments, follows_per_user=pd.Series(follows[0]).value_counts().to_dict(), fans=fans,
        comments=comments, kol_score={int(k): float(v) for k, v in kol.items()}, quality=quality, expired=expired,
        pools=pools,
        item_vectors=None,
    )
    broken = ctx.broken
    tt = _attempt(broken, "two_tower", lambda: TwoTowerRetriever(_current(cfg, "two_tower"), catalogue, clicks, users))
    if tt is not None:
        ctx.two_tower, ctx.item_vectors = tt, tt.item_vectors
        ctx.versions["two_tower"] = _current(cfg, "two_tower").name
    if tt is not None:  # the indexes are pinned: a pointer moving later does not change this context
        for pool in sorted({c.pool for st in s.strategies.values() for c in st.channels.values() if c.kind == "two_tower"}):
            version = _attempt(broken, f"ann:two_tower:{pool}",
                               lambda p=pool: artifacts.require_current(ann_refresh.index_store(cfg, "two_tower", p)))
            index = version and _attempt(broken, f"ann:two_tower:{pool}",
                                         lambda v=version: ann.load(v.path / ann_refresh.INDEX_FILE))
            if index is not None:
                ctx.indexes[pool], ctx.versions[f"ann:two_tower:{pool}"] = index, version.name
    for model in ("itemcf", "swing"):
        version = _attempt(broken, model, lambda m=model: _current(cfg, m))
        if version is not None:
            fitted: U2I2I | None = _attempt(broken, model, lambda v=version: i2i.retriever(cfg, v, catalogue, clicks))
            if fitted is not None:
                ctx.retrievers[model], ctx.versions[model] = fitted, version.name
    fitted_on_the_fly = {
        "u2u2i": lambda: U2U2I(catalogue, clicks, cfg.retrieval),
        "u2a2i": lambda: U2A2I(catalogue, clicks, cfg.retrieval, follows, implicit),
        "u2a2a2i": lambda: U2A2A2I(catalogue, clicks, cfg.retrieval, follows, implicit),
        "popularity": lambda: Popularity(clicks, len(catalogue)),
    }
    for kind, fit in fitted_on_the_fly.items():
        if kind in s.channel_kinds():
            fitted = _attempt(broken, kind, fit)
            if fitted is not None:
                ctx.retrievers[kind] = fitted
    pre = _attempt(broken, "preranking", lambda: _current(cfg, preranking.MODEL))
    if pre is not None:
        loaded = _attempt(broken, "preranking", lambda: load_pre(pre.path))
        if loaded is not None:
            ctx.pre, ctx.versions["preranking"] = (*loaded, pre), pre.name
    full = _attempt(broken, "full_ranking", lambda: _current(cfg, full_ranking.MODEL))
    if full is not None:
        loaded = _attempt(broken, "full_ranking", lambda: load_full(full.path))
        if loaded is not None:
            ctx.full, ctx.versions["full_ranking"] = (*loaded, full), full.name
    groups = cfg.ranking.special_groups
    ctx.residual = artifacts.current(special_groups.residual_store(cfg))
    ctx.calibrator = artifacts.current(special_groups.calibrator_store(cfg, groups.calibrated_segment))
    if broken:
        raise_alert(Alert(
            source="serving.load_context", severity="warning", kind="data_quality",
            title=f"feeds for {day + dt.timedelta(days=1)} served without {', '.join(sorted(broken))}",
            details={"day": str(day), "broken": broken},
        ), cfg)
    log.info("serving context for %s: %d items, %d users, %d positives, channels %s%s", day + dt.timedelta(days=1),
             len(catalogue), len(users.user_id), len(clicks), sorted([*ctx.retrievers, *(["two_tower"] if tt else [])]),
             f"; broken: {sorted(broken)}" if broken else "")
    return ctx.prepare()


def seen_matrix(ctx: ServingContext, user_ids: np.ndarray) -> sp.csr_matrix:
    """Binary (users x items) CSR, sorted indices, of the items each user was shown in the
    seen-filter window or had a positive on in the retrieval window (rows of `ctx.seen`)."""
    seen = ctx.seen
    pos, known = lookup(np.asarray(user_ids, dtype=np.int64), seen.users)
    starts = np.where(known, seen.matrix.indptr[pos], 0)
    counts = np.where(known, seen.matrix.indptr[pos + 1] - seen.matrix.indptr[pos], 0) if len(seen.users) else starts
    indptr = np.r_[0, np.cumsum(counts)]
    take = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
    return sp.csr_matrix((np.ones(len(take)), seen.matrix.indices[take], indptr),
                         shape=(len(user_ids), len(ctx.catalogue)))
