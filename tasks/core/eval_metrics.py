"""Offline retrieval metrics over retrieved lists and next-day truth (catalogue rows).

`retrieved` is an (n_users, k) int array of catalogue rows, best first, -1 padded; `truth` holds,
per user, the catalogue rows the user clicked on the evaluation day (non-empty arrays). Every
metric averages over users (macro), as recommender papers report Recall@K and NDCG@K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def _hits(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(n_users, k) bool: is the item at each position one of the user's truth items."""
    top = retrieved[:, :k]
    return np.array([np.isin(row, t) & (row >= 0) for row, t in zip(top, truth)], dtype=bool).reshape(len(top), -1)


def recall_at_k(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> float:
    """Mean over users of |top-k ∩ truth| / |truth|."""
    hits = _hits(retrieved, truth, k).sum(axis=1)
    sizes = np.array([len(np.unique(t)) for t in truth], dtype=np.float64)
    return float(np.mean(hits / sizes)) if len(sizes) else float("nan")


def hit_rate_at_k(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> float:
    """Share of users with at least one truth item in their top k."""
    hits = _hits(retrieved, truth, k)
    return float(hits.any(axis=1).mean()) if len(hits) else float("nan")


def ndcg_at_k(retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int) -> float:
    """Mean over users of DCG@k / ideal DCG@k with binary gains."""
    hits = _hits(retrieved, truth, k)
    if not len(hits):
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.array([discounts[: min(len(np.unique(t)), hits.shape[1])].sum() for t in truth])
    return float(np.mean(dcg / ideal))


def tail_recall_at_k(
    retrieved: np.ndarray, truth: Sequence[np.ndarray], k: int, tail_mask: np.ndarray
) -> float:
    """Recall@k counting only truth items in the tail (tail_mask over catalogue rows), over the
    users who clicked at least one tail item."""
    tail_truth = [np.unique(t[tail_mask[t]]) for t in truth]
    keep = [i for i, t in enumerate(tail_truth) if len(t)]
    if not keep:
        return float("nan")
    return recall_at_k(retrieved[keep], [tail_truth[i] for i in keep], k)


def coverage_at_k(retrieved: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in anyone's top k."""
    top = retrieved[:, :k]
    return float(len(np.unique(top[top >= 0])) / n_items) if n_items else float("nan")


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
