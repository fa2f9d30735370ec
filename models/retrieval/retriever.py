"""The interface every retrieval channel implements, and the popularity baseline.

A channel is fitted on the positives of a training window (tasks/retrieval_data.Events, items as
catalogue rows) and then answers `retrieve(user_ids, k)`: for each user, up to k catalogue rows,
best first, padded with -1, never an item the user already had a positive on in training (those
are what the evaluation's next day is compared against, not what retrieval should return).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp

from models.common.tables import Events


class Retriever(Protocol):
    """A fitted retrieval channel."""

    name: str

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        """(len(user_ids), k) int64 catalogue rows, best first, -1 padded; seen items excluded."""
        ...


def seen_matrix(events: Events, user_ids: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Binary (len(user_ids) x n_items) CSR of the training positives of `user_ids` (unique ids,
    rows in their order; a user without positives gets an empty row)."""
    order = np.argsort(user_ids, kind="stable")
    ids = user_ids[order]
    pos = np.minimum(np.searchsorted(ids, events.user_id), max(len(ids) - 1, 0))
    hit = (ids[pos] == events.user_id) if len(ids) else np.zeros(len(events), bool)
    m = sp.csr_matrix(
        (np.ones(int(hit.sum()), np.float32), (order[pos[hit]], events.item[hit])), shape=(len(user_ids), n_items)
    )
    m.data[:] = 1.0
    return m


def top_k_rows(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Top-k columns of each row of a dense score matrix (best first, -1 where the score is -inf),
    after setting the excluded (user, item) cells to -inf."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if exclude is not None and exclude.nnz:
        r, c = exclude.nonzero()
        scores[r, c] = -np.inf
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if k_eff else np.zeros((len(scores), 0), int)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # score desc, then row id (deterministic ties)
    best = np.take_along_axis(part, order, axis=1)
    best = np.where(np.take_along_axis(part_scores, order, axis=1) == -np.inf, -1, best)
    out = np.full((len(scores), k), -1, dtype=np.int64)
    out[:, :k_eff] = best
    return out


class Popularity:
    """The baseline: the most clicked items of the training window, the same list for everyone."""

    name = "popularity"

    def __init__(self, events: Events, n_items: int):
        self.counts = np.bincount(events.item, minlength=n_items).astype(np.float64)
        self.events = events
        self.n_items = n_items

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        scores = np.broadcast_to(self.counts, (len(user_ids), self.n_items))
        return top_k_rows(scores, k, seen_matrix(self.events, user_ids, self.n_items))
