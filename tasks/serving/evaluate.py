"""Offline evaluation of the whole recommendation funnel: with the artifacts current now and the
data through day d, the feeds for d + 1 of the users who click on d + 1 (.. d + eval_days), scored
against those clicks next to the stages and baselines they came from.

What is scored (`what`), one list per user:

- feed: the final feed in position order, at K = feed length and every evaluation.k below it;
- candidates: the merged candidate set of `retrieve` (every channel under its quota, before the
  filters), ranked by the pre-ranker's relevance (its heads weighted by the fusion weights, as the
  funnel's pre-ranking selection scores them); at the feed's Ks and at K = total_quota, the whole
  set (whose recall does not depend on the order);
- popularity: the retrieval evaluation's baseline and lists (the window's most clicked items, the
  user's own positives excluded), at the feed's Ks;
- channel:<name>: each channel's own top K (`retrieve` with every channel at quota K = feed
  length, split by channel), ordered for NDCG by the same pre-ranker relevance (the funnel does not
  expose a channel's own order);
- funnel: the mean number of candidates per user after each stage (k = 0).

Metrics per (what, user group, K): recall, ndcg (tasks/core/eval_metrics, macro over users),
coverage (share of the catalogue in anyone's list); at K = feed length also ild (intra-list
diversity: 1 − mean pairwise cosine of the items' two-tower vectors), category_entropy (natural
log, of category_l1) and length (mean list length; for the whole candidate set at its K); for the
feed also recall_ceiling (mean over users of min(|truth neither seen nor expired|, K) / |truth|:
what any feed can reach past the seen filter). User groups as in the retrieval evaluation: all,
with_history / without_history, each segment (on the user's first evaluation day with a click).
Every value carries the users it averages (`n_users`), a percentile bootstrap CI over them
(`ci_low`, `ci_high`; none for coverage) and `below_min_users` (fewer than evaluation.min_users: a
warning is logged). Lists are cut at K after ordering by score descending, then catalogue row
(= item_id) ascending. Rows in `funnel_eval`, one run per (day, eval_days, train_window_days,
strategy): other runs are kept (the history), a re-run of the same one replaces its rows. A current artifact
that saw data after d (a model trained through a later day, a pool refreshed later) is named in a
warning: the numbers would be optimistic.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import pandas as pd

from tasks.core import artifacts, registry
from tasks.core import eval_metrics as m
from tasks.core.config import EvaluationConfig, PlatformConfig, StrategyConfig
from tasks.core.warehouse import replace_rows, table_names
from tasks.pools.refresh import end_of_day
from tasks.retrieval.data import connect_read
from tasks.retrieval.evaluate import (
    RUN_KEY,
    EvalData,
    few_users_warning,
    intervals,
    load_eval_data,
    popularity,
    user_groups,
)
from tasks.serving.blocks import BLOCK_USERS
from tasks.serving.context import ServingContext, load_context, seen_matrix
from tasks.serving.funnel import exposures_for, prerank_scores, recommend, retrieve

log = logging.getLogger(__name__)
TABLE = "funnel_eval"
RESULT_COLUMNS = (*RUN_KEY, "strategy", "what", "segment", "k", "metric", "value", "ci_low", "ci_high", "n_users",
                  "below_min_users")
FEED, CANDIDATES, POPULARITY, FUNNEL, CHANNEL = "feed", "candidates", "popularity", "funnel", "channel:"
STAGES = ("retrieved", "merged", "filtered", "preranked", "feed", "exploration")


def prerank_relevance(ctx: ServingContext, s: StrategyConfig, user_ids: np.ndarray,
                      items: np.ndarray) -> np.ndarray:
    """The pre-ranker's relevance of each (user, catalogue row) pair on the served day: its heads
    weighted by the fusion weights (all 1 when none applies), as the pre-ranking selection scores them."""
    preds, heads = prerank_scores(ctx, s, exposures_for(ctx, user_ids, items))
    w = np.array([s.fusion.weights.get(h, 0.0) for h in heads])
    return preds @ (w if w.any() else np.ones(len(heads)))


def ranked_lists(rows: np.ndarray, items: np.ndarray, score: np.ndarray, n_rows: int, width: int) -> np.ndarray:
    """(n_rows, width) catalogue rows per list row, -1 padded: the top `width` by score descending,
    then catalogue row (= item_id) ascending, so ties at the cut are broken by that rule."""
    order = np.lexsort((items, -score, rows))
    rows, items = rows[order], items[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n_rows))[rows]
    keep = rank < width
    out = np.full((n_rows, width), -1, dtype=np.int64)
    out[rows[keep], rank[keep]] = items[keep]
    return out


def intra_list_diversity(lists: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Per list, 1 − the mean cosine over its distinct item pairs (vectors L2-normalised); NaN
    for a list of fewer than two items."""
    valid = lists >= 0
    x = vectors[np.maximum(lists, 0)] * valid[..., None]
    n = valid.sum(axis=1).astype(np.float64)
    cosine_sum = np.square(x.sum(axis=1)).sum(axis=1) - np.square(x).sum(axis=(1, 2))  # over ordered pairs
    return 1.0 - cosine_sum / np.where(n > 1, n * (n - 1), np.nan)


def category_entropy(lists: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Per list, the entropy (nats) of its items' categories; NaN for an empty list."""
    valid = lists >= 0
    counts = np.zeros((len(lists), int(categories.max()) + 1))
    r, c = np.nonzero(valid)
    np.add.at(counts, (r, categories[lists[r, c]]), 1.0)
    n = valid.sum(axis=1)
    p = counts / np.maximum(n, 1)[:, None]
    return np.where(n > 0, -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1), np.nan)


def _feed_lists(ctx: ServingContext, rows: pd.DataFrame, users: np.ndarray, length: int) -> np.ndarray:
    out = np.full((len(users), length), -1, dtype=np.int64)
    user_row = np.searchsorted(users, rows.user_id.to_numpy(np.int64))
    out[user_row, rows.position.to_numpy()] = ctx.catalogue.index(rows.item_id.to_numpy(np.int64))
    return out


def _at_quota(s: StrategyConfig, k: int) -> StrategyConfig:
    """The strategy with every channel at quota k, for every segment."""
    channels = {name: c.model_copy(update={"quota": k}) for name, c in s.channels.items()}
    return s.model_copy(update={"channels": channels, "segment_quotas": {}, "total_quota": k * len(channels)})


def funnel_lists(ctx: ServingContext, name: str, users: np.ndarray) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The ranked lists of `users` (sorted) per `what` but popularity, and the funnel counts."""
    s = ctx.cfg.serving.strategy(name)
    k, names = s.feed_length, list(s.channels)
    per_k = _at_quota(s, k)
    blocks: dict[str, list[np.ndarray]] = {}
    funnels = []
    for lo in range(0, len(users), BLOCK_USERS):
        block = users[lo : lo + BLOCK_USERS]
        feeds = recommend(ctx, block, name)
        funnels.append(feeds.funnel)
        cu, ci, _, _ = retrieve(ctx, s, block)
        hu, hi, hm, _ = retrieve(ctx, per_k, block)
        rel = prerank_relevance(ctx, s, block[np.r_[cu, hu]], np.r_[ci, hi])
        lists = {FEED: _feed_lists(ctx, feeds.rows, block, k),
                 CANDIDATES: ranked_lists(cu, ci, rel[: len(cu)], len(block), s.total_quota)}
        for c, channel in enumerate(names):
            mine = (hm >> c & 1).astype(bool)
            lists[CHANNEL + channel] = ranked_lists(hu[mine], hi[mine], rel[len(cu):][mine], len(block), k)
        for what, got in lists.items():
            blocks.setdefault(what, []).append(got)
        log.info("funnel evaluation %s: %d/%d users", name, lo + len(block), len(users))
    return {what: np.concatenate(got) for what, got in blocks.items()}, pd.concat(funnels, ignore_index=True)


def recall_ceiling(ctx: ServingContext, data: EvalData, k: int) -> np.ndarray:
    """Per user, min(|truth neither seen nor expired|, k) / |truth|."""
    seen = seen_matrix(ctx, data.users)
    reachable = [np.sum(~np.isin(t, seen[r].indices) & ~ctx.expired[t]) for r, t in enumerate(data.truth)]
    return np.minimum(reachable, k) / np.array([len(t) for t in data.truth], dtype=np.float64)


def _rows(what: str, segment: str, k: int, values: dict[str, tuple[float, float, float, int]]) -> list[dict]:
    return [{"what": what, "segment": segment, "k": k, "metric": metric, "value": v, "ci_low": lo, "ci_high": hi,
             "n_users": n} for metric, (v, lo, hi, n) in values.items()]


def _means(per_user: dict[str, np.ndarray], ev: EvaluationConfig) -> dict[str, tuple[float, float, float, int]]:
    """Each per-user measure's mean and CI over the users for whom it is defined (finite)."""
    return {metric: intervals(v, ev)[0] for metric, v in per_user.items()}


def score_lists(what: str, lists: np.ndarray, ks: tuple[int, ...], data: EvalData,
                groups: dict[str, np.ndarray], ctx: ServingContext, list_k: int) -> list[dict]:
    """Recall, NDCG and coverage at each K, and at `list_k` the list measures, per user group."""
    ev = ctx.cfg.evaluation
    per_user = {"length": (lists[:, : max(ks)] >= 0).sum(axis=1).astype(np.float64)}
    if list_k in ks:
        per_user["category_entropy"] = category_entropy(lists[:, :list_k], ctx.catalogue.category_l1)
        if ctx.item_vectors is not None:
            per_user["ild"] = intra_list_diversity(lists[:, :list_k], ctx.item_vectors)
    out = []
    for segment, rows in groups.items():
        got, truth = lists[rows], [data.truth[i] for i in rows]
        means = iter(intervals(m.user_terms(got, truth, ks, ("recall", "ndcg")), ev))
        for k in ks:
            out += _rows(what, segment, k, {
                "recall": next(means), "ndcg": next(means),
                "coverage": (m.coverage_at_k(got, k, len(data.catalogue)), float("nan"), float("nan"), len(rows))})
        out += _rows(what, segment, max(ks), _means({"length": per_user["length"][rows]}, ev))
        out += _rows(what, segment, list_k, _means({metric: v[rows] for metric, v in per_user.items()
                                                    if metric != "length"}, ev))
    return out


def newer_artifacts(cfg: PlatformConfig, ctx: ServingContext) -> list[str]:
    """The artifacts serving `ctx` that saw data after its day (they make the evaluation optimistic)."""
    out = []
    models = set(registry.registered_models(cfg))
    for model, name in ctx.versions.items():
        if model not in models:  # an ANN index: follows its pool and model
            continue
        through = registry.trained_through(artifacts.load(registry.model_store(cfg, model), name))
        if through > ctx.day:
            out.append(f"{model} {name} (trained through {through})")
    with connect_read(cfg) as con:
        if "pool_current" in table_names(con):
            out += [f"pool {p} {v} (as of {a})" for p, v, a in con.execute(
                "select pool, version, as_of from pool_current where as_of > ? order by pool",
                [end_of_day(ctx.day)]).fetchall()]
    return out


def evaluate_funnel(cfg: PlatformConfig, day: dt.date, strategy: str | None = None,
                    eval_days: int = 1) -> pd.DataFrame:
    """The funnel's rows (RESULT_COLUMNS) for the data through `day`, scored on the clicks of the
    following `eval_days` days, under `strategy` (default: serving.default_strategy)."""
    name = strategy or cfg.serving.default_strategy
    s = cfg.serving.strategy(name)
    started = time.perf_counter()
    data = load_eval_data(cfg, day, eval_days)
    ctx = load_context(cfg, day)
    for note in newer_artifacts(cfg, ctx):
        log.warning("funnel evaluation of %s: %s saw data after it; the numbers are optimistic", day, note)
    groups = user_groups(data)
    ks = tuple(sorted({k for k in cfg.evaluation.k if k <= s.feed_length} | {s.feed_length}))
    lists, funnel = funnel_lists(ctx, name, data.users)
    # the retrieval evaluation's list (clicks desc, then row asc), cut at the feed length
    lists[POPULARITY] = popularity(cfg, data).retrieve(data.users, s.feed_length)
    rows = []
    for what, got in lists.items():
        at = (*ks, s.total_quota) if what == CANDIDATES else ks
        rows += score_lists(what, got, at, data, groups, ctx, s.feed_length)
    ceiling = recall_ceiling(ctx, data, s.feed_length)
    stages = [st for st in STAGES if st in funnel]
    for segment, r in groups.items():
        rows += _rows(FEED, segment, s.feed_length, _means({"recall_ceiling": ceiling[r]}, cfg.evaluation))
        rows += _rows(FUNNEL, segment, 0, _means({st: funnel[st].to_numpy(np.float64)[r] for st in stages},
                                                 cfg.evaluation))
    out = pd.DataFrame.from_records(rows)
    out = out.assign(day=day, eval_days=data.eval_days, train_window_days=data.train_window_days, strategy=name,
                     below_min_users=out.n_users < cfg.evaluation.min_users)[list(RESULT_COLUMNS)]
    if warning := few_users_warning(out, cfg.evaluation.min_users):
        log.warning("funnel evaluation of %s (%s): %s", day, name, warning)
    log.info("funnel evaluation of %s (%s): %d users with clicks in the next %d day(s), %.0f s", day, name,
             len(data.users), eval_days, time.perf_counter() - started)
    return out


def write_results(cfg: PlatformConfig, results: pd.DataFrame) -> None:
    """Store results in `funnel_eval`: the rows of each run (RUN_KEY, strategy) replace those of the
    same run; other runs, earlier ones included, are kept (the history)."""
    replace_rows(cfg, TABLE, results[list(RESULT_COLUMNS)], [*RUN_KEY, "strategy"],
                 columns="day date, eval_days integer, train_window_days integer, strategy varchar, what varchar, "
                         "segment varchar, k integer, metric varchar, value double, ci_low double, ci_high double, "
                         "n_users bigint, below_min_users boolean, evaluated_at timestamp", stamp="evaluated_at")
