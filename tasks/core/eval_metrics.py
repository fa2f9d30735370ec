"""Offline retrieval metrics over retrieved lists and next-day truth (catalogue rows).

`retrieved` is an (n_users, k) int array of catalogue rows, best first, -1 padded; `truth` holds,
per user, the catalogue rows the user clicked on the evaluation day (non-empty arrays). Every
metric averages over users (macro), as recommender papers report Recall@K and NDCG@K: the
`user_*` functions give the per-user terms, which `bootstrap_ci` resamples for a CI over users.
The top-K cut of a list is its first K entries: lists are ordered by score descending, then
catalogue row (= item_id) ascending (docs/METHODS.md "Offline retrieval evaluation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

BOOTSTRAP_CELLS = 1 << 22  # draws (resamples x users) held at once


def _hits_and_sizes(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, k) bool: is the item at each position one of the user's truth items; and per user
    the number of distinct truth items. All users at once: each (user, item) pair is one integer
    key, user * width + item, looked up in the sorted distinct keys of the truth."""
    top = retrieved[:, :k].astype(np.int64)
    lengths = np.fromiter((len(t) for t in truth), np.int64, len(truth))
    items = np.concatenate(truth).astype(np.int64) if len(truth) else np.zeros(0, np.int64)
    width = max(0, int(top.max(initial=0)), int(items.max(initial=0))) + 1
    keys = np.unique(np.repeat(np.arange(len(truth), dtype=np.int64), lengths) * width + items)
    wanted = np.arange(len(top), dtype=np.int64)[:, None] * width + top
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    hits = (keys[at] == wanted) & (top >= 0) if len(keys) else np.zeros(top.shape, dtype=bool)
    return hits, np.bincount(keys // width, minlength=len(truth)).astype(np.float64)


def _recall(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / sizes


def _hit(hits: np.ndarray) -> np.ndarray:
    return hits.any(axis=1).astype(np.float64)


def _ndcg(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal_of = np.array([discounts[:m].sum() for m in range(hits.shape[1] + 1)])  # by distinct truth items
    ideal = ideal_of[np.minimum(sizes, hits.shape[1]).astype(np.int64)]
    return (hits * discounts).sum(axis=1) / ideal if len(hits) else np.zeros(0)


def user_recall(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per user, |top-k ∩ truth| / |truth| (distinct truth items)."""
    return _recall(*_hits_and_sizes(retrieved, truth, k))


def user_hit(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per user, 1.0 if a truth item is in the top k, else 0.0."""
    return _hit(_hits_and_sizes(retrieved, truth, k)[0])


def user_ndcg(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per user, DCG@k / ideal DCG@k with binary gains."""
    return _ndcg(*_hits_and_sizes(retrieved, truth, k))


TERMS = {"recall": _recall, "ndcg": _ndcg, "hit_rate": lambda hits, sizes: _hit(hits)}


def user_terms(retrieved: np.ndarray, truth: Sequence[np.ndarray], ks: Sequence[int],
               metrics: Sequence[str] = ("recall", "ndcg", "hit_rate")) -> np.ndarray:
    """(n_users, len(ks) x len(metrics)): per user the `metrics` (of TERMS) at each k of `ks`, k
    by k, the same values as user_recall, user_ndcg and user_hit; the truth is looked up once."""
    hits, sizes = _hits_and_sizes(retrieved, truth, max(ks))
    return np.column_stack([TERMS[name](hits[:, :k], sizes) for k in ks for name in metrics])


def user_tail_recall(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int, tail_mask: np.ndarray) -> np.ndarray:
    """Per user, Recall@k counting only truth items in the tail (tail_mask over catalogue rows);
    NaN for a user who clicked no tail item."""
    tail_truth = [t[tail_mask[t]] for t in truth]
    hits, sizes = _hits_and_sizes(retrieved, tail_truth, k)
    out = np.full(len(truth), np.nan)
    keep = sizes > 0
    out[keep] = _recall(hits[keep], sizes[keep])
    return out


def _mean(per_user: np.ndarray) -> float:
    finite = per_user[np.isfinite(per_user)]
    return float(finite.mean()) if len(finite) else float("nan")


def recall_at_k(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> float:
    """Mean over users of |top-k ∩ truth| / |truth|."""
    return _mean(user_recall(retrieved, truth, k))


def hit_rate_at_k(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> float:
    """Share of users with at least one truth item in their top k."""
    return _mean(user_hit(retrieved, truth, k))


def ndcg_at_k(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> float:
    """Mean over users of DCG@k / ideal DCG@k with binary gains."""
    return _mean(user_ndcg(retrieved, truth, k))


def tail_recall_at_k(
    retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int, tail_mask: np.ndarray
) -> float:
    """Recall@k counting only truth items in the tail (tail_mask over catalogue rows), over the
    users who clicked at least one tail item."""
    return _mean(user_tail_recall(retrieved, truth, k, tail_mask))


def bootstrap_ci(per_user: np.ndarray, resamples: int, alpha: float, seed: int,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI (two-sided, 1 - alpha) over users: `resamples` draws of the n rows
    of `per_user` ((n,) or (n, m): a user's values always drawn together) with replacement
    (numpy default_rng(seed)), each reduced to its column means ((resamples,) or (resamples, m))
    and then by `statistic` (default: the means themselves); returns the alpha/2 and 1 - alpha/2
    quantiles of the statistic (scalars or arrays, as it gives)."""
    values = np.asarray(per_user, np.float64)
    n = len(values)
    if n == 0:
        raise ValueError("a bootstrap needs at least one user")
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS // n)
    stats = []
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n, (min(chunk, resamples - start), n))
        # each resample's mean as (how often each row was drawn) @ values / n: one count per draw,
        # whatever the number of columns, instead of gathering every column of every drawn row
        counts = np.bincount((draws + n * np.arange(len(draws))[:, None]).ravel(), minlength=draws.size)
        means = counts.reshape(draws.shape).astype(np.float64) @ values / n
        stats.append(means if statistic is None else statistic(means))
    low, high = np.quantile(np.concatenate(stats), [alpha / 2, 1 - alpha / 2], axis=0)
    return low, high


def coverage_at_k(retrieved: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in anyone's top k."""
    top = retrieved[:, :k]
    return float(np.count_nonzero(np.bincount(top[top >= 0], minlength=n_items)) / n_items) if n_items else float("nan")


def tail_items(train_item_rows: np.ndarray, n_items: int, tail_share: float) -> np.ndarray:
    """Bool mask of the tail: the least clicked `tail_share` of the catalogue in training (items
    never clicked are tail; ties broken by row so the share is exact)."""
    counts = np.bincount(train_item_rows, minlength=n_items)
    order = np.lexsort((np.arange(n_items), counts))  # least clicked first
    mask = np.zeros(n_items, dtype=bool)
    mask[order[: int(round(tail_share * n_items))]] = True
    return mask


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: the probability that a random positive scores above a random negative (ties count
    one half), from average ranks (Mann-Whitney U); NaN without both classes."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
