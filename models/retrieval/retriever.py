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

ISIN_TABLE_RANGE = 50_000_000  # seen_matrix: user id ranges up to this get np.isin's table method (a bool per id)


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
    table = len(ids) and int(ids[-1]) - int(ids[0]) < ISIN_TABLE_RANGE  # a lookup table beats sorting the events
    hit = np.isin(events.user_id, ids, kind="table" if table else None)
    rows = order[np.searchsorted(ids, events.user_id[hit])]
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, events.item[hit])), shape=(len(user_ids), n_items))
    m.data[:] = 1.0
    return m


def top_k_rows(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Top-k columns of each row of a dense score matrix (best first, -1 where the score is -inf),
    after setting the excluded (user, item) cells to -inf. Ties, also at the cut: the lower column
    first (docs/METHODS.md "Offline retrieval evaluation", Top-K cut)."""
    scores = np.array(scores, dtype=np.result_type(scores, np.float32), copy=True)  # float32 stays float32
    if exclude is not None and exclude.nnz:
        r, c = exclude.nonzero()
        scores[r, c] = -np.inf
    n, k_eff = scores.shape[1], min(k, scores.shape[1])
    part = (np.argpartition(scores, n - k_eff, axis=1)[:, n - k_eff:] if k_eff  # the k largest, in any order
            else np.zeros((len(scores), 0), int))
    part_scores = np.take_along_axis(scores, part, axis=1)
    if k_eff:
        # argpartition keeps an arbitrary subset of the items tied with the k-th best score: where
        # it left one out, take every item above that score and the lowest columns equal to it.
        kth = part_scores.min(axis=1, keepdims=True)
        cut_ties = np.isfinite(kth[:, 0]) & ((scores == kth).sum(axis=1) > (part_scores == kth).sum(axis=1))
        for row in np.flatnonzero(cut_ties):
            above = np.flatnonzero(scores[row] > kth[row, 0])
            part[row] = np.concatenate([above, np.flatnonzero(scores[row] == kth[row, 0])[: k_eff - len(above)]])
        part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # score desc, then row id (deterministic ties)
    best = np.take_along_axis(part, order, axis=1)
    best = np.where(np.take_along_axis(part_scores, order, axis=1) == -np.inf, -1, best)
    out = np.full((len(scores), k), -1, dtype=np.int64)
    out[:, :k_eff] = best
    return out


class Popularity:
    """The baseline: the most clicked items of the training window, the same list for everyone
    (ties: the lower catalogue row first)."""

    name = "popularity"

    def __init__(self, events: Events, n_items: int):
        self.counts = np.bincount(events.item, minlength=n_items).astype(np.float64)
        self.events = events
        self.n_items = n_items
        self.order = np.argsort(-self.counts, kind="stable")  # the list, best first
        self.rank = np.empty(n_items, dtype=np.int64)
        self.rank[self.order] = np.arange(n_items)
        by_user = np.argsort(events.user_id, kind="stable")
        self.users, starts, counts = np.unique(events.user_id[by_user], return_index=True, return_counts=True)
        self.bounds = np.stack([starts, starts + counts], axis=1)
        self.user_items = events.item[by_user]

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        """The first k items of the list each user has no positive on, -1 padded."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.users, user_ids), max(len(self.users) - 1, 0))
        known = self.users[pos] == user_ids if len(self.users) else np.zeros(len(user_ids), bool)
        starts, ends = np.where(known[:, None], self.bounds[pos] if len(self.users) else 0, 0).T
        width = int(min(k + (ends - starts).max(initial=0), self.n_items))  # enough of the list for everyone
        lengths = ends - starts
        offsets = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
        ranks = self.rank[self.user_items[offsets]]
        excluded = np.zeros((len(user_ids), width), dtype=bool)
        near = ranks < width
        excluded[np.repeat(np.arange(len(user_ids)), lengths)[near], ranks[near]] = True
        slot = np.cumsum(~excluded, axis=1) - 1  # the output column of each kept entry
        rows, cols = np.nonzero(~excluded & (slot < k))
        out = np.full((len(user_ids), k), -1, dtype=np.int64)
        out[rows, slot[rows, cols]] = self.order[cols]
        return out
