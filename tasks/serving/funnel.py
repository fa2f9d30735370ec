"""The recommendation funnel (docs/METHODS.md "Recommendation path"), for a block of users at once:

retrieval from every channel of the strategy under its quota (per segment) -> merge and dedupe,
each candidate keeping the channels that found it -> filters (seen items, expired items, the
quality floor of protected users) -> pre-ranker scores and the interest + diversity selection ->
full ranker on the survivors (special-group models where trained) -> fusion score with the bonus
terms -> MMR or DPP under the category and cluster spacing rules -> exploration items at random
slots -> the feed.

Every stage is fail-open: a channel or model missing from the serving context is skipped (the
context has raised the alert); without a pre-ranker the selection uses the items' quality, without
a full ranker the fusion uses the pre-ranker's heads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.common.features import lookup, user_features
from models.common.tables import Exposures
from models.ranking.features import ranking_features
from models.ranking.full import predict_proba
from models.ranking.pre import predict as pre_predict
from models.retrieval import ann
from models.retrieval.retriever import top_k_rows
from models.retrieval.two_tower import user_vectors
from models.serving.diversity import dpp, interest_then_diverse, mmr
from models.serving.exploration import exploration_slots, interleave
from models.serving.fusion import BONUS_HEADS, fusion_score, fusion_terms
from tasks.core.config import ALL, RANKING_HEADS, ChannelConfig, StrategyConfig
from tasks.ranking.pre import Context, inputs
from tasks.ranking.special_groups import Scored, apply_calibrator, apply_residual, logit, sigmoid
from tasks.serving.context import ServingContext, seen_matrix

log = logging.getLogger(__name__)
FIXED_COLUMNS = ("user_id", "position", "item_id", "channels", "decision")


@dataclass(frozen=True)
class Feeds:
    """`rows`: one row per (user, position) with the explanation of the item; `funnel`: one row
    per user with the count of candidates after each stage."""

    rows: pd.DataFrame
    funnel: pd.DataFrame
    seconds: dict[str, float]  # wall time of each stage


def _serve_day(ctx: ServingContext) -> dt.date:
    return ctx.day + dt.timedelta(days=1)


def _rng(ctx: ServingContext, strategy: str, user_id: int) -> np.random.Generator:
    """The same draws for a (day, strategy, user) on every run."""
    return np.random.default_rng([ctx.cfg.serving.seed, _serve_day(ctx).toordinal(), int(user_id),
                                  sum(map(ord, strategy))])


# Retrieval ------------------------------------------------------------------------------------
def sampled_sequences(ctx: ServingContext, s: StrategyConfig, user_ids: np.ndarray, name: str) -> np.ndarray:
    """(n, keep_last + sample_older) catalogue rows of each user's positives, -1 padded: the last
    `keep_last` distinct items, then `sample_older` drawn from the older ones (uniformly, or evenly
    over their categories when `category_balanced`)."""
    q = s.sequence_sampling
    width = q.keep_last + q.sample_older
    out = np.full((len(user_ids), width), -1, dtype=np.int64)
    ev = ctx.clicks
    order = np.lexsort((-ev.ts_us, ev.user_id))
    users, items = ev.user_id[order], ev.item[order]
    starts = np.searchsorted(users, user_ids)
    ends = np.searchsorted(users, user_ids, side="right")
    for r, (u, a, b) in enumerate(zip(user_ids, starts, ends)):
        mine = pd.unique(items[a:b])  # distinct, most recent first
        recent, older = mine[: q.keep_last], mine[q.keep_last:]
        if len(older) and q.sample_older:
            rng = _rng(ctx, name, int(u))
            if q.category_balanced:
                cats = ctx.catalogue.category_l1[older]
                weights = 1.0 / np.bincount(cats)[cats]
                older = rng.choice(older, size=min(q.sample_older, len(older)), replace=False, p=weights / weights.sum())
            else:
                older = rng.choice(older, size=min(q.sample_older, len(older)), replace=False)
        seq = np.r_[recent, older[: q.sample_older]]
        out[r, : len(seq)] = seq
    return out


def _noisy_vectors(ctx: ServingContext, s: StrategyConfig, name: str, user_ids: np.ndarray,
                   vectors: np.ndarray) -> np.ndarray:
    """User vectors with Gaussian noise of scale σ·(1 + boost·(1 − H/H_max)), H the entropy of the
    categories of the user's recent positives (narrow interests: more noise), renormalised."""
    n = s.user_noise
    if not n.scale or not len(user_ids):
        return vectors
    recent = sampled_sequences(ctx, s.model_copy(update={"sequence_sampling": s.sequence_sampling.model_copy(
        update={"keep_last": n.recent_items, "sample_older": 0})}), user_ids, name)
    h_max = np.log(max(len(ctx.catalogue.l1_names), 2))
    out = vectors.copy()
    for r, u in enumerate(user_ids):
        cats = ctx.catalogue.category_l1[recent[r][recent[r] >= 0]]
        p = np.bincount(cats) / max(len(cats), 1) if len(cats) else np.zeros(1)
        h = -(p[p > 0] * np.log(p[p > 0])).sum()
        scale = n.scale * (1.0 + n.narrow_boost * (1.0 - h / h_max))
        out[r] += _rng(ctx, name, int(u)).normal(0.0, scale, size=out.shape[1]).astype(out.dtype)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _two_tower_vectors(ctx: ServingContext, s: StrategyConfig, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """User vectors: from the user tower with the sampled sequence when sampling is on, else the
    version's (exported, or from the tower for users it has not seen)."""
    tt = ctx.two_tower
    vectors, known = tt.vectors(user_ids)
    if s.sequence_sampling.enabled:
        seq = sampled_sequences(ctx, s, user_ids, "two_tower")
        item_rows = tt.vocabs["item"].rows(ctx.catalogue.item_id)
        seq = np.where(seq >= 0, item_rows[np.maximum(seq, 0)], 0)
        vectors = user_vectors(tt.model, user_features(tt.vocabs, ctx.users, user_ids), seq)
    return vectors, known


def _pool_rows(ctx: ServingContext, pool: str, user_id: int) -> np.ndarray:
    """The pool's members for this user: its everyone list, or the lists of the user's segments."""
    lists = ctx.pools.get(pool, {})
    if ALL in lists:
        return lists[ALL]
    mine = [lists[seg] for seg in ctx.user_segments(user_id) if seg in lists]
    return pd.unique(np.concatenate(mine)) if mine else np.zeros(0, np.int64)


def _channel(ctx: ServingContext, s: StrategyConfig, name: str, ch: ChannelConfig, user_ids: np.ndarray,
             k: int) -> np.ndarray:
    """(len(user_ids), k) catalogue rows, -1 padded; empty rows when the channel cannot serve."""
    out = np.full((len(user_ids), k), -1, dtype=np.int64)
    if not len(user_ids) or not k:
        return out
    if ch.kind == "pool":
        for r, u in enumerate(user_ids):
            rows = _pool_rows(ctx, ch.pool, int(u))[:k]
            out[r, : len(rows)] = rows
        return out
    if ch.kind == "two_tower":
        if ctx.two_tower is None or ch.pool not in ctx.indexes:
            return out
        vectors, known = _two_tower_vectors(ctx, s, user_ids)
        targets = set(ctx.cfg.pool(ch.pool).segments)  # a segment pool serves its segments' users only
        if targets:
            known &= np.array([bool(targets & set(ctx.user_segments(u))) for u in user_ids])
        vectors = _noisy_vectors(ctx, s, name, user_ids, vectors)
        ids, _ = ann.search(ctx.indexes[ch.pool], vectors[known], k)
        pos, found = lookup(ids.ravel(), ctx.catalogue.item_id)
        out[known] = np.where(found & (ids.ravel() >= 0), pos, -1).reshape(ids.shape)
        return out
    if ch.kind in ("itemcf", "swing") and s.sequence_sampling.enabled and ch.kind in ctx.retrievers:
        seeds = sampled_sequences(ctx, s, user_ids, ch.kind)
        r, c = np.nonzero(seeds >= 0)
        m = sp.csr_matrix((np.ones(len(r)), (r, seeds[r, c])), shape=(len(user_ids), len(ctx.catalogue)))
        return top_k_rows((m @ ctx.retrievers[ch.kind].sim).toarray(), k)
    retriever = ctx.retrievers.get(ch.kind)
    return out if retriever is None else retriever.retrieve(user_ids, k)


def retrieve(ctx: ServingContext, s: StrategyConfig, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                  np.ndarray, pd.DataFrame]:
    """Every channel under the user's quota, merged: (user index, catalogue row, channel bit mask)
    of each distinct candidate, and the count each channel returned per user."""
    names = list(s.channels)
    users, items, masks = [], [], []
    counts = np.zeros((len(user_ids), len(names)), dtype=np.int64)
    quotas = np.array([[s.quota(name, ctx.user_segments(u)) for name in names] for u in user_ids], dtype=np.int64)
    for c, name in enumerate(names):
        for k in np.unique(quotas[:, c]):
            r = np.flatnonzero(quotas[:, c] == k)
            got = _channel(ctx, s, name, s.channels[name], user_ids[r], int(k))
            ur, col = np.nonzero(got >= 0)
            counts[r, c] = np.bincount(ur, minlength=len(r))
            users.append(r[ur])
            items.append(got[ur, col])
            masks.append(np.full(len(ur), 1 << c, dtype=np.int64))
    u, i, m = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (users, items, masks))
    key = u * len(ctx.catalogue) + i
    order = np.argsort(key, kind="stable")
    key, m = key[order], m[order]
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    merged = np.bitwise_or.reduceat(m, np.flatnonzero(first)) if len(key) else m
    key = key[first]
    return key // len(ctx.catalogue), key % len(ctx.catalogue), merged, pd.DataFrame(counts, columns=names)


def channel_names(s: StrategyConfig, mask: int) -> list[str]:
    return [name for c, name in enumerate(s.channels) if mask >> c & 1]


# Ranking --------------------------------------------------------------------------------------
def exposures_for(ctx: ServingContext, user_ids: np.ndarray, items: np.ndarray) -> Exposures:
    """Candidate (user, catalogue row) pairs as ranking examples of the served day (position 0)."""
    day = _serve_day(ctx)
    start = int((dt.datetime.combine(day, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds()) * 1_000_000
    n = len(items)
    return Exposures(np.full(n, np.datetime64(day, "D")), user_ids.astype(np.int64), ctx.catalogue.item_id[items],
                     np.full(n, start, dtype=np.int64), np.zeros(n, dtype=np.int64),
                     np.zeros((n, len(RANKING_HEADS)), np.float32))


def prerank_scores(ctx: ServingContext, s: StrategyConfig, exposures: Exposures) -> tuple[np.ndarray, tuple[str, ...]]:
    """(n, targets) pre-ranker probabilities and the target names; the items' quality when there is
    no pre-ranker."""
    if ctx.pre is None:
        return ctx.quality[ctx.catalogue.index(exposures.item_id)][:, None], ("quality",)
    model, vocabs, version = ctx.pre
    pctx = Context(ctx.catalogue, ctx.users, ctx.clicks, ctx.day)
    x = inputs(vocabs, pctx, exposures, version.meta["config"]["sequence_length"])
    return pre_predict(model, x.users, x.seq, x.items), tuple(version.meta["targets"])


def full_scores(ctx: ServingContext, exposures: Exposures) -> np.ndarray | None:
    """(n, len(RANKING_HEADS)) full-ranker probabilities, or None without a full ranker; for the
    users of the special groups, corrected by the residual model (in logit space) and the
    calibrator where they are trained (docs/METHODS.md "Special user groups")."""
    if ctx.full is None:
        return None
    model, vocabs, version = ctx.full
    f = ranking_features(vocabs, ctx.catalogue, ctx.users, ctx.clicks, exposures,
                         version.meta["config"]["full"]["sequence_length"])
    p = predict_proba(model, f.users, f.items, f.context, f.seq)
    if ctx.residual is None and ctx.calibrator is None:
        return p
    users, row_user = np.unique(exposures.user_id, return_inverse=True)
    names = {g for u in users for g in ctx.user_segments(u)}
    of_user = {g: np.array([g in ctx.user_segments(u) for u in users]) for g in names}
    scored = Scored(exposures, logit(p), ctx.users, ctx.catalogue, {g: m[row_user] for g, m in of_user.items()})
    if ctx.residual is not None:
        scored = dataclasses.replace(scored, full_logits=apply_residual(ctx.residual, scored))
        p = sigmoid(scored.full_logits)
    if ctx.calibrator is not None:
        p = apply_calibrator(ctx.calibrator, scored)
    return p.astype(np.float32)


def _weighted(preds: np.ndarray, heads: tuple[str, ...], weights: dict[str, float]) -> np.ndarray:
    w = np.array([weights.get(h, 0.0) for h in heads])
    if not w.any():
        w = np.ones(len(heads))
    return preds @ w


# The feed -------------------------------------------------------------------------------------
def recommend(ctx: ServingContext, user_ids: np.ndarray, strategy: str | None = None,
              config: StrategyConfig | None = None) -> Feeds:
    """The feeds of `user_ids` under the named strategy (default: serving.default_strategy), or
    under `config` labelled `strategy` (an experiment arm's resolved strategy)."""
    name = strategy or ctx.cfg.serving.default_strategy
    s = config if config is not None else ctx.cfg.serving.strategy(name)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    clock = _Clock()
    cand_user, cand_item, cand_mask, retrieved = retrieve(ctx, s, user_ids)
    clock.lap("retrieval")
    funnel = pd.concat([pd.DataFrame({"user_id": user_ids}), retrieved.add_prefix("from_")], axis=1)
    funnel["retrieved"] = retrieved.sum(axis=1).to_numpy()
    funnel["merged"] = np.bincount(cand_user, minlength=len(user_ids))

    seen = seen_matrix(ctx, user_ids)
    keep = ~np.asarray(seen[cand_user, cand_item]).ravel().astype(bool) & ~ctx.expired[cand_item]
    protected = np.array([bool(set(ctx.user_segments(u)) & set(s.protection.segments)) for u in user_ids])
    if protected.any() and s.protection.min_quality_quantile > 0:
        floor = np.quantile(ctx.quality, s.protection.min_quality_quantile)
        keep &= ~(protected[cand_user] & (ctx.quality[cand_item] < floor))
    cand_user, cand_item, cand_mask = cand_user[keep], cand_item[keep], cand_mask[keep]
    funnel["filtered"] = np.bincount(cand_user, minlength=len(user_ids))
    clock.lap("filters")

    pre, pre_heads = prerank_scores(ctx, s, exposures_for(ctx, user_ids[cand_user], cand_item))
    pre_rel = _weighted(pre, pre_heads, s.fusion.weights)
    vectors = ctx.item_vectors if ctx.item_vectors is not None else np.zeros((len(ctx.catalogue), 1), np.float32)
    chosen = []
    bounds = np.searchsorted(cand_user, np.arange(len(user_ids) + 1))
    for r in range(len(user_ids)):
        rows = np.arange(bounds[r], bounds[r + 1])
        picked = interest_then_diverse(pre_rel[rows], vectors[cand_item[rows]], s.preranking.interest,
                                       s.preranking.diverse, s.preranking.eta)
        chosen.append(rows[np.sort(picked)])
    sel = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    funnel["preranked"] = np.bincount(cand_user[sel], minlength=len(user_ids))
    clock.lap("preranking")

    exposures = exposures_for(ctx, user_ids[cand_user[sel]], cand_item[sel])
    full = full_scores(ctx, exposures)
    if full is None:
        heads = tuple(h for h in pre_heads if h in RANKING_HEADS)
        preds = pre[sel][:, [pre_heads.index(h) for h in heads]]
    else:
        heads, preds = RANKING_HEADS, full
    users_of = user_ids[cand_user[sel]]
    items_of = cand_item[sel]
    counts = {
        "follow": np.array([ctx.follows_per_user.get(int(u), 0) for u in users_of], np.float64),
        "fan": ctx.fans[items_of], "comment": ctx.comments[items_of],
        "kol_share": np.array([ctx.kol_score.get(int(u), 0.0) for u in users_of], np.float64),
    }
    bonuses = {b: (c.function, c.a, c.x0) for b, c in s.fusion.bonuses.items() if BONUS_HEADS[b] in heads}
    terms = fusion_terms(preds, heads, s.fusion.weights, bonuses, counts)
    if not terms:  # no ranker knows any weighted head: the pre-selection's relevance orders the feed
        terms = {"prerank": pre_rel[sel]}
    score = fusion_score(terms, len(sel))
    clock.lap("ranking")
    masks_of, prerank_of = cand_mask[sel], pre_rel[sel]
    per_user = np.searchsorted(cand_user[sel], np.arange(len(user_ids) + 1))

    out = []
    feed_rows = []  # per user: (explore items, slots, ranked rows, relaxed rows)
    for r, u in enumerate(user_ids):
        rng = _rng(ctx, name, int(u))
        slots = exploration_slots(s.feed_length, s.exploration.share, rng)
        explore = _exploration_items(ctx, s, int(u), seen[r].indices, len(slots), rng)
        rows = np.arange(per_user[r], per_user[r + 1])
        rows = rows[~np.isin(items_of[rows], explore)]
        picked = _diversify(s, score[rows], vectors[items_of[rows]], ctx.catalogue.category_l2[items_of[rows]],
                            ctx.catalogue.content_cluster[items_of[rows]], s.feed_length - len(explore))
        ranked = rows[picked.items]
        relaxed = set(ranked[picked.relaxed].tolist())
        feed_rows.append((explore, slots, ranked, relaxed))
    clock.lap("diversity")
    for u, (explore, slots, ranked, relaxed) in zip(user_ids, feed_rows):
        feed, is_explore = interleave(ranked, explore, slots)
        for pos, (row, exp) in enumerate(zip(feed, is_explore)):
            if exp:
                out.append({"user_id": int(u), "position": pos, "item_id": int(ctx.catalogue.item_id[row]),
                            "channels": s.exploration.pool, "decision": "exploration"})
                continue
            rec = {"user_id": int(u), "position": pos, "item_id": int(ctx.catalogue.item_id[items_of[row]]),
                   "channels": ",".join(channel_names(s, int(masks_of[row]))),
                   "decision": "ranked, spacing relaxed" if row in relaxed else "ranked",
                   "prerank": float(prerank_of[row]), "score": float(score[row])}
            rec.update({f"p_{h}": float(preds[row, j]) for j, h in enumerate(heads)})
            rec.update({t: float(v[row]) for t, v in terms.items()})
            out.append(rec)
    rows_df = pd.DataFrame(out, columns=list(FIXED_COLUMNS) if not out else None)
    rows_df.insert(3, "strategy", name)
    per_feed = rows_df.groupby("user_id").size()
    funnel["feed"] = per_feed.reindex(user_ids, fill_value=0).to_numpy()
    explored = rows_df[rows_df.decision == "exploration"].groupby("user_id").size()
    funnel["exploration"] = explored.reindex(user_ids, fill_value=0).to_numpy()
    clock.lap("output")
    return Feeds(rows_df, funnel, clock.seconds)


class _Clock:
    """Wall time per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last
        self._last = now


def _diversify(s: StrategyConfig, score: np.ndarray, vectors: np.ndarray, categories: np.ndarray,
               clusters: np.ndarray, k: int):
    """The ranked part of the feed: DPP, MMR, or (none) the scores' order, under the spacing rules."""
    d = s.diversity
    kw = dict(categories=categories, clusters=clusters, category_gap=d.category_gap, cluster_gap=d.cluster_gap)
    if d.method == "dpp":  # the DPP window counts the new pick: w + 1 conditions on the last w picks
        return dpp(score, vectors, k, d.eta, window=d.window + 1, **kw)
    return mmr(score, vectors, k, d.eta if d.method == "mmr" else 1.0, window=d.window, **kw)


def _exploration_items(ctx: ServingContext, s: StrategyConfig, user_id: int, seen: np.ndarray, n: int,
                       rng: np.random.Generator) -> np.ndarray:
    """n distinct items of the exploration pool for the user's segments (the whole pool for a user
    in none), neither seen nor expired, drawn uniformly."""
    lists = ctx.pools.get(s.exploration.pool, {})
    mine = [lists[g] for g in ctx.user_segments(user_id) if g in lists] or list(lists.values())
    pool = pd.unique(np.concatenate(mine)) if mine else np.zeros(0, np.int64)
    pool = pool[~np.isin(pool, seen) & ~ctx.expired[pool]]
    return rng.choice(pool, size=min(n, len(pool)), replace=False) if n and len(pool) else np.zeros(0, np.int64)
