"""Niche CF retrieval channels (docs/METHODS.md "Retrieval channels"): U2U2I, U2A2I and U2A2A2I.

- U2U2I: sim(u, v) = cosine between u's positives and v's positives (v's capped at
  `max_users_per_item` users per item, models/cf_common.cap_users_per_item); score(i) = Σ over u's
  `top_k_users` most similar other users v of sim(u, v)·like(v, i).
- U2A2I: the authors a user follows, explicitly (weight 1) or implicitly (weight = the pair's
  affinity / the user's largest implicit affinity, in (0, 1]; the larger weight if both), each
  bringing their `items_per_author` most clicked items of the training window:
  score(i) = weight(u, author(i)) × clicks(i).
- U2A2A2I: author similarity = cosine between authors' columns of the users x authors engagement
  matrix (positives per user and author), `similar_authors` per author; score(i) =
  Σ_a weight(u, a)·sim(a, author(i)) × clicks(i), over authors the user does not already follow
  (those are U2A2I's).

Every channel is fitted on the training window's positives (tasks/retrieval_data.Events) and
excludes them from what it retrieves. Query users are processed in blocks of about
`DEFAULT_BUDGET` score entries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from models.common.tables import Catalogue, Events
from models.retrieval.cf_common import (
    binary,
    cap_users_per_item,
    cost_blocks,
    lookup_rows,
    row_normalised,
    run_starts,
    top_k_items,
    top_k_matrix,
    top_k_per_row,
    user_item_matrix,
    with_empty_row,
    without,
)
from models.retrieval.i2i import DEFAULT_BUDGET, cosine_blocks, neighbour_table
from models.retrieval.retriever import seen_matrix
from tasks.core.config import RetrievalConfig


def _retrieve(
    user_ids: np.ndarray, k: int, events: Events, n_items: int, cost: np.ndarray,
    scores: Callable[[slice], sp.csr_matrix],
) -> np.ndarray:
    """Top-k unseen items of `scores(block)` over blocks of query users of about DEFAULT_BUDGET
    `cost` (score entries) each."""
    out = np.empty((len(user_ids), k), dtype=np.int64)
    for lo, hi in cost_blocks(cost, DEFAULT_BUDGET):
        block = slice(lo, hi)
        out[block] = top_k_items(scores(block), k, seen_matrix(events, user_ids[block], n_items))
    return out


class U2U2I:
    """The positives of the user's most similar users."""

    name = "u2u2i"

    def __init__(self, catalogue: Catalogue, events: Events, cfg: RetrievalConfig, seed: int = 0):
        self.events, self.n_items, self.top_k_users = events, len(catalogue), cfg.u2u2i.top_k_users
        self.users, positives = user_item_matrix(events, self.n_items)
        self.positives = binary(positives)
        self.queries = with_empty_row(row_normalised(self.positives))
        capped = cap_users_per_item(self.positives, cfg.u2u2i.max_users_per_item, seed)
        self.index = row_normalised(capped).T.tocsr()  # items x users
        self.users_per_item = np.diff(self.index.indptr).astype(np.float64)

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        rows = lookup_rows(self.users, user_ids)
        queries = self.queries[rows]

        def scores(block: slice) -> sp.csr_matrix:
            sims = sp.csr_matrix(queries[block] @ self.index)
            own = np.repeat(rows[block], np.diff(sims.indptr))
            sims.data[sims.indices == own] = 0.0  # not one's own neighbour
            sims.eliminate_zeros()
            neighbours = top_k_matrix(*top_k_per_row(sims, self.top_k_users), len(self.users))
            return neighbours @ self.positives

        cost = queries.astype(bool) @ self.users_per_item  # similarity entries per query user
        return _retrieve(user_ids, k, self.events, self.n_items, cost, scores)


def follow_weights(
    authors: np.ndarray, follows: tuple[np.ndarray, np.ndarray], implicit: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, sp.csr_matrix]:
    """(sorted user ids, users x authors CSR of follow weights with an empty last row): explicit
    follows weigh 1, implicit ones their affinity / the user's largest implicit affinity, a pair
    in both the larger; authors not in `authors` (sorted ids: no catalogue item) are dropped."""
    exp_user, exp_author = (np.asarray(a, dtype=np.int64) for a in follows)
    imp_user, imp_author = (np.asarray(a, dtype=np.int64) for a in implicit[:2])
    affinity = np.asarray(implicit[2], dtype=np.float64)
    users = np.unique(np.r_[exp_user, imp_user])
    imp_rows = np.searchsorted(users, imp_user)
    top_affinity = np.zeros(len(users))
    np.maximum.at(top_affinity, imp_rows, affinity)
    user_rows = np.r_[np.searchsorted(users, exp_user), imp_rows]
    weights = np.r_[np.ones(len(exp_user)), affinity / np.where(top_affinity > 0, top_affinity, 1.0)[imp_rows]]
    author_rows = lookup_rows(authors, np.r_[exp_author, imp_author])
    known = (author_rows < len(authors)) & (weights > 0)
    user_rows, author_rows, weights = user_rows[known], author_rows[known], weights[known]
    key = user_rows * len(authors) + author_rows
    order = np.lexsort((-weights, key))
    best = order[run_starts(key[order])]  # the larger weight of a pair given twice
    m = sp.csr_matrix((weights[best], (user_rows[best], author_rows[best])), shape=(len(users), len(authors)))
    return users, with_empty_row(m)


class AuthorIndex:
    """Authors (sorted ids), each user's followed authors with weights, and each author's most
    clicked items of the window (valued by their clicks)."""

    def __init__(
        self,
        catalogue: Catalogue,
        events: Events,
        items_per_author: int,
        follows: tuple[np.ndarray, np.ndarray],
        implicit_follows: tuple[np.ndarray, np.ndarray, np.ndarray],
    ):
        self.authors, item_author = np.unique(catalogue.author_id, return_inverse=True)
        n_items, n_authors = len(catalogue), len(self.authors)
        self.item_author = sp.csr_matrix(
            (np.ones(n_items), (np.arange(n_items), item_author)), shape=(n_items, n_authors)
        )
        clicks = np.bincount(events.item, minlength=n_items).astype(np.float64)
        clicked = np.flatnonzero(clicks)
        by_author = sp.csr_matrix((clicks[clicked], (item_author[clicked], clicked)), shape=(n_authors, n_items))
        self.author_items = top_k_matrix(*top_k_per_row(by_author, items_per_author), n_items)
        self.users, self.follows = follow_weights(self.authors, follows, implicit_follows)

    def followed(self, user_ids: np.ndarray) -> sp.csr_matrix:
        """len(user_ids) x authors follow weights."""
        return self.follows[lookup_rows(self.users, user_ids)]


class U2A2I:
    """The most clicked items of the authors the user follows, explicitly or implicitly."""

    name = "u2a2i"

    def __init__(
        self,
        catalogue: Catalogue,
        events: Events,
        cfg: RetrievalConfig,
        follows: tuple[np.ndarray, np.ndarray],
        implicit_follows: tuple[np.ndarray, np.ndarray, np.ndarray],
    ):
        """`follows`: explicit (user_id, author_id) edges as of the last training day
        (tasks/retrieval_data.load_follows); `implicit_follows`: (user_id, author_id, affinity)."""
        self.events, self.n_items = events, len(catalogue)
        self.index = AuthorIndex(catalogue, events, cfg.authors.items_per_author, follows, implicit_follows)
        self.items_per_author = cfg.authors.items_per_author

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        followed = self.index.followed(user_ids)
        cost = np.diff(followed.indptr) * float(self.items_per_author)
        return _retrieve(
            user_ids, k, self.events, self.n_items, cost, lambda block: followed[block] @ self.index.author_items
        )


class U2A2A2I:
    """The most clicked items of authors similar (by co-engagement) to the ones the user follows."""

    name = "u2a2a2i"

    def __init__(
        self,
        catalogue: Catalogue,
        events: Events,
        cfg: RetrievalConfig,
        follows: tuple[np.ndarray, np.ndarray],
        implicit_follows: tuple[np.ndarray, np.ndarray, np.ndarray],
    ):
        """Arguments as U2A2I's."""
        self.events, self.n_items = events, len(catalogue)
        self.index = AuthorIndex(catalogue, events, cfg.authors.items_per_author, follows, implicit_follows)
        engagement = sp.csr_matrix(binary(user_item_matrix(events, self.n_items)[1]) @ self.index.item_author)
        blocks = cosine_blocks(engagement, DEFAULT_BUDGET, "author similarity")
        self.similar = neighbour_table(blocks, len(self.index.authors), cfg.authors.similar_authors).matrix()
        self.fan_out = cfg.authors.similar_authors * cfg.authors.items_per_author

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        followed = self.index.followed(user_ids)

        def scores(block: slice) -> sp.csr_matrix:
            reached = without(followed[block] @ self.similar, followed[block])
            return reached @ self.index.author_items

        cost = np.diff(followed.indptr) * float(self.fan_out)
        return _retrieve(user_ids, k, self.events, self.n_items, cost, scores)
