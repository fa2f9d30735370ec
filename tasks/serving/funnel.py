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
from itertools import pairwise

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from models.common.features import lookup, to_item_rows, user_features
from models.common.tables import Exposures
from models.ranking.features import context_features
from models.ranking.full import predict_proba_by_user
from models.ranking.pre import score_logits
from models.retrieval import ann
from models.retrieval.retriever import top_k_rows
from models.retrieval.two_tower import user_vectors
from models.serving.diversity import Selection, dpp_rows, interest_then_diverse_rows, minmax_rows, mmr_rows
from models.serving.exploration import exploration_slots, interleave
from models.serving.fusion import BONUS_HEADS, fusion_score, fusion_terms
from tasks.core.config import ALL, RANKING_HEADS, ChannelConfig, StrategyConfig
from tasks.ranking.special_groups import Scored, apply_calibrator, apply_residual, logit, sigmoid
from tasks.serving.context import ServingContext, per_user, seen_matrix

log = logging.getLogger(__name__)
FIXED_COLUMNS = ("user_id", "position", "item_id", "channels", "decision")
PRERANK_BLOCK = 65_536  # candidates scored per step of the pre-ranker (bounds the (n, targets, d) product)


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
    runs = ctx.recent_first_runs
    items = runs.items
    starts, ends = runs.bounds(user_ids)
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
    vectors = np.zeros((len(user_ids), tt.item_vectors.shape[1]), dtype=np.float32)
    pos, known = lookup(user_ids, tt.user_ids)
    vectors[known] = tt.user_vectors[pos[known]]  # exported; the others as tt.vectors computes them
    rest = np.flatnonzero(~known)
    if len(rest):
        vectors[rest], known[rest] = tt.vectors(user_ids[rest])
    if s.sequence_sampling.enabled:
        seq = sampled_sequences(ctx, s, user_ids, "two_tower")
        item_rows = tt.vocabs["item"].rows(ctx.catalogue.item_id)
        seq = np.where(seq >= 0, item_rows[np.maximum(seq, 0)], 0)
        vectors = user_vectors(tt.model, user_features(tt.vocabs, ctx.users, user_ids), seq)
    return vectors, known


def _pool_rows(ctx: ServingContext, pool: str, segments: tuple[str, ...]) -> np.ndarray:
    """The pool's members for a user in `segments`: its everyone list, or the lists of the segments."""
    lists = ctx.pools.get(pool, {})
    if ALL in lists:
        return lists[ALL]
    mine = [lists[seg] for seg in segments if seg in lists]
    return pd.unique(np.concatenate(mine)) if mine else np.zeros(0, np.int64)


def _by_segments(ctx: ServingContext, user_ids: np.ndarray) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """(the distinct segment tuples of the users, the index of each user's tuple)."""
    index: dict[tuple[str, ...], int] = {}
    of_user = np.array([index.setdefault(ctx.user_segments(u), len(index)) for u in user_ids], dtype=np.int64)
    return list(index), of_user


def _channel(ctx: ServingContext, s: StrategyConfig, name: str, ch: ChannelConfig, user_ids: np.ndarray,
             k: int, user_vectors: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """(len(user_ids), k) catalogue rows, -1 padded; empty rows when the channel cannot serve.
    user_vectors: the users' `_two_tower_vectors` (a two_tower channel's input, None without one)."""
    out = np.full((len(user_ids), k), -1, dtype=np.int64)
    if not len(user_ids) or not k:
        return out
    if ch.kind == "pool":
        groups, of_user = _by_segments(ctx, user_ids)
        for g, segments in enumerate(groups):
            rows = _pool_rows(ctx, ch.pool, segments)[:k]
            out[np.ix_(of_user == g, np.arange(len(rows)))] = rows
        return out
    if ch.kind == "two_tower":
        if user_vectors is None or ch.pool not in ctx.indexes:
            return out
        vectors, known = user_vectors
        targets = set(ctx.cfg.pool(ch.pool).segments)  # a segment pool serves its segments' users only
        if targets:
            groups, of_user = _by_segments(ctx, user_ids)
            known &= np.array([bool(targets & set(g)) for g in groups], dtype=bool)[of_user]
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
    groups, of_user = _by_segments(ctx, user_ids)
    quotas = np.array([[s.quota(name, g) for name in names] for g in groups], dtype=np.int64).reshape(
        len(groups), len(names))[of_user]
    towers = [c for c, ch in enumerate(s.channels.values()) if ch.kind == "two_tower" and ch.pool in ctx.indexes]
    tt = (_two_tower_vectors(ctx, s, user_ids) if ctx.two_tower is not None and (quotas[:, towers] > 0).any()
          else None)  # once for every two-tower channel
    for c, name in enumerate(names):
        for k in np.unique(quotas[:, c]):
            r = np.flatnonzero(quotas[:, c] == k)
            got = _channel(ctx, s, name, s.channels[name], user_ids[r], int(k), None if tt is None else (tt[0][r], tt[1][r]))
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
    n = len(items)
    return Exposures(np.full(n, np.datetime64(_serve_day(ctx), "D")), user_ids.astype(np.int64),
                     ctx.catalogue.item_id[items], np.full(n, ctx.serve_start_us, dtype=np.int64),
                     np.zeros(n, dtype=np.int64), np.zeros((n, len(RANKING_HEADS)), np.float32))


def _check_served_day(ctx: ServingContext, exposures: Exposures) -> None:
    """ValueError unless every exposure is shown at the start of the served day (`exposures_for`):
    the sequences come from the context's click runs as of that time."""
    if (exposures.shown_us != ctx.serve_start_us).any():
        raise ValueError("ranking scores are served for exposures_for(...) of the served day only")


@torch.no_grad()
def prerank_scores(ctx: ServingContext, s: StrategyConfig, exposures: Exposures) -> tuple[np.ndarray, tuple[str, ...]]:
    """(n, targets) pre-ranker probabilities and the target names; the items' quality when there is
    no pre-ranker. Each distinct user is encoded once; item vectors come from `ctx.pre_tables`."""
    if ctx.pre is None:
        return ctx.quality[ctx.catalogue.index(exposures.item_id)][:, None], ("quality",)
    _check_served_day(ctx, exposures)
    model, vocabs, version = ctx.pre
    tables = ctx.pre_tables
    users, row_user = np.unique(exposures.user_id, return_inverse=True)
    seq = to_item_rows(ctx.pre_runs.latest(users, version.meta["config"]["sequence_length"]), tables.items[:, 0])
    encoded = model.eval().encode_users(torch.from_numpy(user_features(vocabs, ctx.users, users)), torch.from_numpy(seq))
    pos, known = lookup(exposures.item_id, ctx.catalogue.item_id)
    unknown = model.encode_items(torch.zeros((1, tables.items.shape[1]), dtype=torch.int64)).numpy()
    out = np.empty((len(exposures), model.n_targets), np.float32)
    for lo in range(0, len(exposures), PRERANK_BLOCK):
        hi = lo + PRERANK_BLOCK
        vectors = np.where(known[lo:hi, None], tables.vectors[pos[lo:hi]], unknown) if len(tables.vectors) else unknown
        logits = score_logits(encoded[torch.from_numpy(row_user[lo:hi])], torch.from_numpy(vectors), model.bias)
        out[lo:hi] = torch.sigmoid(logits).numpy()
    return out, tuple(version.meta["targets"])


def full_scores(ctx: ServingContext, exposures: Exposures) -> np.ndarray | None:
    """(n, len(RANKING_HEADS)) full-ranker probabilities, or None without a full ranker; for the
    users of the special groups, corrected by the residual model (in logit space) and the
    calibrator where they are trained (docs/METHODS.md "Special user groups"). The inputs of
    `models.ranking.features.ranking_features`, each distinct user's rows and sequence built and
    encoded once (`predict_proba_by_user`)."""
    if ctx.full is None:
        return None
    _check_served_day(ctx, exposures)
    model, vocabs, version = ctx.full
    users, row_user = np.unique(exposures.user_id, return_inverse=True)
    table = ctx.full_tables.items
    cat_rows, found = lookup(exposures.item_id, ctx.catalogue.item_id)
    seq = ctx.full_runs.latest(users, version.meta["config"]["full"]["sequence_length"])
    p = predict_proba_by_user(model, user_features(vocabs, ctx.users, users), table[seq + 1],
                              table[np.where(found, cat_rows + 1, 0)], context_features(exposures, ctx.catalogue), row_user)
    if ctx.residual is None and ctx.calibrator is None:
        return p
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
    keep = ~_pairs_in(seen, cand_user, cand_item, len(ctx.catalogue)) & ~ctx.expired[cand_item]
    groups, of_user = _by_segments(ctx, user_ids)
    protected = np.array([bool(set(g) & set(s.protection.segments)) for g in groups], dtype=bool)[of_user]
    if protected.any() and s.protection.min_quality_quantile > 0:
        floor = np.quantile(ctx.quality, s.protection.min_quality_quantile)
        keep &= ~(protected[cand_user] & (ctx.quality[cand_item] < floor))
    cand_user, cand_item, cand_mask = cand_user[keep], cand_item[keep], cand_mask[keep]
    funnel["filtered"] = np.bincount(cand_user, minlength=len(user_ids))
    clock.lap("filters")

    pre, pre_heads = prerank_scores(ctx, s, exposures_for(ctx, user_ids[cand_user], cand_item))
    pre_rel = _weighted(pre, pre_heads, s.fusion.weights)
    vectors = ctx.item_vectors if ctx.item_vectors is not None else np.zeros((len(ctx.catalogue), 1), np.float32)
    bounds = np.searchsorted(cand_user, np.arange(len(user_ids) + 1))
    cut_rel = minmax_rows(pre_rel, bounds) if s.preranking.relevance == "minmax" else pre_rel
    sel = interest_then_diverse_rows(cut_rel, cand_item, bounds, vectors, s.preranking.interest,
                                     s.preranking.diverse, s.preranking.eta)
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
    counts = {"follow": per_user(ctx.follow_counts, users_of), "fan": ctx.fans[items_of],
              "comment": ctx.comments[items_of], "kol_share": per_user(ctx.kol_scores, users_of)}
    bonuses = {b: (c.function, c.a, c.x0) for b, c in s.fusion.bonuses.items() if BONUS_HEADS[b] in heads}
    terms = fusion_terms(preds, heads, s.fusion.weights, bonuses, counts)
    if not terms:  # no ranker knows any weighted head: the pre-selection's relevance orders the feed
        terms = {"prerank": pre_rel[sel]}
    score = fusion_score(terms, len(sel))
    clock.lap("ranking")
    per_user_rows = np.searchsorted(cand_user[sel], np.arange(len(user_ids) + 1))

    explore_lists: dict[tuple[str, ...], np.ndarray] = {}
    slots, explore, ranked = [], [], []  # per user: exploration slots and items, the rows left to rank
    for r, u in enumerate(user_ids):
        rng = _rng(ctx, name, int(u))
        slots.append(exploration_slots(s.feed_length, s.exploration.share, rng))
        segments = groups[of_user[r]]
        if segments not in explore_lists:
            explore_lists[segments] = _exploration_pool(ctx, s, segments)
        explore.append(_exploration_items(explore_lists[segments], seen.indices[seen.indptr[r]:seen.indptr[r + 1]],
                                          len(slots[r]), rng))
        rows = np.arange(per_user_rows[r], per_user_rows[r + 1])
        ranked.append(rows[~np.isin(items_of[rows], explore[r])])
    rows = np.concatenate(ranked) if ranked else np.zeros(0, np.int64)
    picked = _diversify(s, score[rows], vectors[items_of[rows]], ctx.catalogue.category_l2[items_of[rows]],
                        ctx.catalogue.content_cluster[items_of[rows]],
                        np.r_[0, np.cumsum([len(x) for x in ranked], dtype=np.int64)],
                        s.feed_length - np.array([len(x) for x in explore], dtype=np.int64))
    feeds = []  # per user: (feed rows, is exploration, relaxed)
    for r in range(len(user_ids)):
        relaxed = np.zeros(len(picked[r].items), bool)
        relaxed[picked[r].relaxed] = True
        feed, is_explore = interleave(ranked[r][picked[r].items], explore[r], slots[r])
        is_relaxed = np.zeros(len(feed), bool)
        is_relaxed[~is_explore] = relaxed[: int((~is_explore).sum())]
        feeds.append((feed, is_explore, is_relaxed))
    clock.lap("diversity")
    rows_df = _feed_rows(ctx, s, name, user_ids, feeds, masks=cand_mask[sel], prerank=pre_rel[sel], score=score,
                         heads=heads, preds=preds, terms=terms, items_of=items_of)
    ids, of_id = np.unique(user_ids, return_inverse=True)  # per user id (a repeated id counts all its rows)
    for column, per_row in (("feed", [len(f[0]) for f in feeds]), ("exploration", [int(f[1].sum()) for f in feeds])):
        funnel[column] = np.bincount(of_id, weights=per_row, minlength=len(ids)).astype(np.int64)[of_id]
    clock.lap("output")
    return Feeds(rows_df, funnel, clock.seconds)


def _pairs_in(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """Whether each (row, col) is a stored cell of `m` (CSR with sorted indices)."""
    stored = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n_cols + m.indices
    keys = rows.astype(np.int64) * n_cols + cols
    pos = np.minimum(np.searchsorted(stored, keys), max(len(stored) - 1, 0))
    return stored[pos] == keys if len(stored) else np.zeros(len(keys), bool)


def _feed_rows(ctx: ServingContext, s: StrategyConfig, name: str, user_ids: np.ndarray,
               feeds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], *, masks: np.ndarray, prerank: np.ndarray,
               score: np.ndarray, heads: tuple[str, ...], preds: np.ndarray, terms: dict[str, np.ndarray],
               items_of: np.ndarray) -> pd.DataFrame:
    """One row per (user, position): the fixed columns, then for ranked items the pre-rank score,
    the fusion score, every head (`p_<head>`) and every fusion term (NaN on exploration rows)."""
    lengths = np.array([len(f[0]) for f in feeds], dtype=np.int64)
    feed = np.concatenate([f[0] for f in feeds]) if feeds else np.zeros(0, np.int64)
    explore = np.concatenate([f[1] for f in feeds]) if feeds else np.zeros(0, bool)
    relaxed = np.concatenate([f[2] for f in feeds]) if feeds else np.zeros(0, bool)
    if not len(feed):
        out = pd.DataFrame(columns=list(FIXED_COLUMNS))
        out.insert(3, "strategy", name)
        return out
    ranked = np.where(explore, 0, feed)  # a row of the selection (garbage on exploration rows, masked below)
    masks_of = masks[ranked] if len(masks) else np.zeros(len(feed), np.int64)
    codes, inverse = np.unique(np.where(explore, -1, masks_of), return_inverse=True)
    labels = np.array([s.exploration.pool if c < 0 else ",".join(channel_names(s, int(c))) for c in codes], object)
    columns: dict[str, np.ndarray] = {
        "user_id": np.repeat(user_ids, lengths),
        "position": np.concatenate([np.arange(n) for n in lengths]),
        "item_id": ctx.catalogue.item_id[np.where(explore, feed, items_of[ranked] if len(items_of) else 0)],
        "strategy": np.full(len(feed), name, dtype=object),
        "channels": labels[inverse.ravel()],
        "decision": np.where(explore, "exploration", np.where(relaxed, "ranked, spacing relaxed", "ranked")).astype(object),
    }
    if not explore.all():
        values = {"prerank": prerank, "score": score, **{f"p_{h}": preds[:, j] for j, h in enumerate(heads)}, **terms}
        columns.update({c: np.where(explore, np.nan, v[ranked].astype(np.float64)) for c, v in values.items()})
    return pd.DataFrame(columns)


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
               clusters: np.ndarray, bounds: np.ndarray, k: np.ndarray) -> list[Selection]:
    """The ranked part of each user's feed (its candidates rows bounds[r]:bounds[r + 1], k[r] slots):
    DPP, MMR (on the user's scores scaled to [0, 1] unless diversity.relevance is raw), or (none)
    the scores' order, under the spacing rules. Without diversity no similarity
    is computed (MMR with η = 1 on zero-width vectors), and without spacing rules either the order is
    a stable sort (the greedy loop's order: ties to the lower index)."""
    d = s.diversity
    kw = {"categories": categories, "clusters": clusters, "category_gap": d.category_gap, "cluster_gap": d.cluster_gap}
    rel = minmax_rows(score, bounds) if d.relevance == "minmax" and d.method != "none" else score
    if d.method == "dpp":  # the DPP window counts the new pick: w + 1 conditions on the last w picks
        return dpp_rows(rel, vectors, bounds, k, d.eta, window=d.window + 1, **kw)
    if d.method == "mmr":
        return mmr_rows(rel, vectors, bounds, k, d.eta, window=d.window, **kw)
    if d.category_gap <= 0 and d.cluster_gap <= 0:
        return [Selection(np.argsort(-score[lo:hi], kind="stable")[:n], np.zeros(0, np.int64))
                for (lo, hi), n in zip(pairwise(bounds), k)]
    return mmr_rows(score, vectors[:, :0], bounds, k, 1.0, window=d.window, **kw)


def _exploration_pool(ctx: ServingContext, s: StrategyConfig, segments: tuple[str, ...]) -> np.ndarray:
    """The exploration pool of a user in `segments` (the whole pool for a user in none), expired
    items removed."""
    lists = ctx.pools.get(s.exploration.pool, {})
    mine = [lists[g] for g in segments if g in lists] or list(lists.values())
    pool = pd.unique(np.concatenate(mine)) if mine else np.zeros(0, np.int64)
    return pool[~ctx.expired[pool]]


def _exploration_items(pool: np.ndarray, seen: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct items of the user's exploration pool not seen, drawn uniformly."""
    pool = pool[~np.isin(pool, seen)]
    return rng.choice(pool, size=min(n, len(pool)), replace=False) if n and len(pool) else np.zeros(0, np.int64)
