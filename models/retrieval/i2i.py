"""I2I retrieval (docs/METHODS.md "ItemCF"): ItemCF and Swing top-k neighbour tables on the binary users x items
positives matrix, and the U2I2I retriever over a table.

Both similarities are computed over consecutive blocks of items: a block holds items whose users'
positives sum to about `budget` entries (Σ_{i in block} Σ_{u in W_i} |I_u|: the block's stack of
users' rows, which also bounds ItemCF's output per block), so memory is bounded by the budget, not
by the number of item pairs. Inside a block all work is vectorised; only blocks are looped over.

- ItemCF: one sparse product (the block's rows of X^T) @ X per block, cosine-normalised.
- Swing: for item i, a pair of users u1 < u2 in W_i and another item j they both liked contribute
  w_u1·w_u2 / (α + |I_u1 ∩ I_u2|) to sim(i, j), twice (the formula sums ordered pairs). Per block
  the users' rows are stacked (W_i of each item in turn) and transposed, so the users of each
  (i, j) are one contiguous run; runs are put in (i, j) order and every pair inside every run is
  enumerated with numpy, a few items (about CHUNK_PAIRS pairs, cache-sized) at a time. Counting
  the pairs per (i, u1, u2) gives |I_u1 ∩ I_u2| - 1 (the shared items other than i); summing the
  pair weights per run gives sim(i, j). The work is the number of (i, j, u1 < u2) quadruples, the
  minimum for exact Swing; the extra memory is one chunk of pairs plus per chunk one counter per
  user pair of each item (|W_i|²/2, so it grows with max_users_per_item²).

Users per item are capped first (models/cf_common.cap_users_per_item): every quantity, |I_u|
included, is then a function of the capped matrix (the reference in models/retrieval/i2i_reference.py takes
that matrix too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.common.tables import Catalogue, Events
from models.retrieval.cf_common import (
    binary,
    cap_users_per_item,
    column_cost,
    cost_blocks,
    lookup_rows,
    run_starts,
    top_k_items,
    top_k_matrix,
    top_k_per_row,
    user_index,
    user_item_matrix,
    user_weights,
    with_empty_row,
)
from models.retrieval.retriever import seen_matrix
from tasks.core.config import ItemCFConfig, RetrievalConfig, SwingConfig

log = logging.getLogger(__name__)
DEFAULT_BUDGET = 1 << 22  # entries of the users x items matrix stacked per block of items
CHUNK_PAIRS = 1 << 20  # Swing: user pairs (and pair counters) enumerated at a time, cache-sized


@dataclass(frozen=True)
class NeighbourTable:
    """Each item's top-k most similar other items."""

    neighbours: np.ndarray  # (n_items, top_k) int64 catalogue rows, best first, -1 padded
    scores: np.ndarray  # (n_items, top_k) float64, 0 where padded

    def matrix(self) -> sp.csr_matrix:
        """The table as a sparse items x items similarity matrix."""
        return top_k_matrix(self.neighbours, self.scores, len(self.neighbours))


def cosine_blocks(m: sp.csr_matrix, budget: int, model: str) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Cosine similarity of the columns of a non-negative rows x columns matrix, block by block:
    (first column, block x n_columns CSR of sim(c, d), d != c); one sparse product per block of
    columns whose product entries (column_cost) stay within `budget`."""
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    m_t = m.T.tocsr()
    blocks = cost_blocks(column_cost(m), budget)
    log.info("%s: %d x %d, %d entries, %d blocks", model, *m.shape, m.nnz, len(blocks))
    t0, pairs = time.perf_counter(), 0
    for n, (start, stop) in enumerate(blocks, 1):
        sim = sp.csr_matrix(m_t[start:stop] @ m)
        rows = start + np.repeat(np.arange(stop - start), np.diff(sim.indptr))
        sim.data *= inverse[rows] * inverse[sim.indices]
        sim.data[sim.indices == rows] = 0.0
        sim.eliminate_zeros()
        pairs += sim.nnz
        _progress(model, n, len(blocks), stop, m.shape[1], pairs, "similar pairs", t0)
        yield start, sim


def itemcf_blocks(
    positives: sp.spmatrix, cfg: ItemCFConfig, seed: int = 0, budget: int = DEFAULT_BUDGET
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """ItemCF similarities block by block: (first item, block x n_items CSR of sim(i, j), j != i).

    sim(i, j) = Σ_v like(v,i)·like(v,j) / (‖like(·,i)‖·‖like(·,j)‖), like(v, i) = w_v for a
    positive (w_v = (|I_v| + 5)^-0.35 with heavy-user damping, else 1), on the capped matrix."""
    x = cap_users_per_item(binary(positives), cfg.max_users_per_item, seed)
    liked = sp.csr_matrix(sp.diags(user_weights(x, cfg.heavy_user_damping)) @ x)
    yield from cosine_blocks(liked, budget, "itemcf")


def swing_blocks(
    positives: sp.spmatrix, cfg: SwingConfig, seed: int = 0, budget: int = DEFAULT_BUDGET
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Swing similarities block by block: (first item, block x n_items CSR of sim(i, j), j != i).

    sim(i, j) = Σ_{u1 in W_i∩W_j} Σ_{u2 in W_i∩W_j, u2 != u1} w_u1·w_u2 / (α + |I_u1 ∩ I_u2|),
    w_u = (|I_u| + 5)^-0.35 with heavy-user damping, else 1, on the capped matrix."""
    x = cap_users_per_item(binary(positives), cfg.max_users_per_item, seed)
    weights = user_weights(x, cfg.heavy_user_damping)
    xc = x.tocsc()
    blocks = cost_blocks(column_cost(x), budget)
    log.info("swing: %d users x %d items, %d positives, %d blocks", *x.shape, x.nnz, len(blocks))
    t0 = time.perf_counter()
    pairs = 0
    for n, (start, stop) in enumerate(blocks, 1):
        sim, block_pairs = _swing_block(x, xc, weights, start, stop, cfg.alpha)
        pairs += block_pairs
        _progress("swing", n, len(blocks), stop, x.shape[1], pairs, "(i, j, u1 < u2) terms", t0)
        yield start, sim


def _progress(model: str, n: int, blocks: int, done: int, items: int, count: int, what: str, t0: float) -> None:
    elapsed = time.perf_counter() - t0
    log.info(
        "%s: block %d/%d, %d/%d items, %d %s, %.1f s (%.0f items/s)",
        model, n, blocks, done, items, count, what, elapsed, done / max(elapsed, 1e-9),
    )


def _pair_template(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) of every pair of positions p < q < n, ordered by q then p, so that the pairs of a run
    of length L are the template's first L(L-1)/2 entries."""
    q = np.repeat(np.arange(n, dtype=np.int32), np.arange(n))
    group_start = (np.cumsum(np.arange(n)) - np.arange(n)).astype(np.int32)
    return np.arange(len(q), dtype=np.int32) - np.repeat(group_start, np.arange(n)), q


def _swing_block(
    x: sp.csr_matrix, xc: sp.csc_matrix, weights: np.ndarray, start: int, stop: int, alpha: float
) -> tuple[sp.csr_matrix, int]:
    """Swing rows of items [start, stop) and the number of (i, j, u1 < u2) terms summed."""
    n_block = stop - start
    sizes = np.diff(xc.indptr[start : stop + 1])  # |W_i|
    users = xc.indices[xc.indptr[start] : xc.indptr[stop]]  # the stack: W_i of each item in turn
    item_of = np.repeat(np.arange(n_block), sizes)  # stack row -> block item
    local = np.arange(len(users)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position in W_i
    # (u1, u2) at positions p < q of W_i -> counter item_key_base[i] + p(2n - p - 3)/2 - 1 + q
    pair_space = sizes.astype(np.int64) * (sizes - 1) // 2
    item_key_base = np.r_[0, np.cumsum(pair_space)]
    n = sizes[item_of]
    row_key = item_key_base[item_of] + local * (2 * n - local - 3) // 2 - 1
    stacked = x[users].tocsc()  # column j: stack rows (ascending) of the users who liked j
    rows = stacked.indices
    items = item_of[rows]
    # runs: the users of one (j, i), in (j, i) order; keep those with a pair of users and j != i
    new_run = run_starts(items)
    new_run[stacked.indptr[:-1][np.diff(stacked.indptr) > 0]] = True  # a new column j
    starts = np.flatnonzero(new_run)
    lengths = np.diff(np.r_[starts, len(rows)])
    run_col = np.searchsorted(stacked.indptr, starts, side="right") - 1
    keep = (lengths >= 2) & (run_col != start + items[starts])
    starts, lengths, run_col = starts[keep], lengths[keep], run_col[keep]
    # in (i, j) order (16-bit keys sort by radix), so each item's pair counters are used together
    by_item = np.argsort(items[starts].astype(np.uint16 if n_block <= 1 << 16 else np.int64), kind="stable")
    starts, lengths, run_col = starts[by_item], lengths[by_item], run_col[by_item]
    run_item = items[starts]
    run_start = np.cumsum(lengths) - lengths  # runs laid out contiguously in that order
    entry_rows = rows[np.repeat(starts - run_start, lengths) + np.arange(lengths.sum())]
    entry_key, entry_local, entry_weight = row_key[entry_rows], local[entry_rows], weights[users[entry_rows]]
    run_pairs = lengths * (lengths - 1) // 2
    template = _pair_template(int(lengths.max(initial=0)))
    sims = np.zeros(len(starts))
    item_runs = np.searchsorted(run_item, np.arange(n_block + 1))  # runs of item b: [item_runs[b], item_runs[b+1])
    for lo, hi in _chunks(np.bincount(run_item, weights=run_pairs, minlength=n_block), pair_space, CHUNK_PAIRS):
        r0, r1 = item_runs[lo], item_runs[hi]
        pairs = run_pairs[r0:r1]
        pair_start = np.cumsum(pairs) - pairs
        in_run = np.arange(pair_start[-1] + pairs[-1] if len(pairs) else 0, dtype=np.int32)
        in_run -= np.repeat(pair_start.astype(np.int32), pairs)
        base = np.repeat(run_start[r0:r1].astype(np.int32), pairs)
        first, second = base + template[0][in_run], base + template[1][in_run]
        key = entry_key[first] + entry_local[second] - item_key_base[lo]
        shared_others = np.bincount(key, minlength=int(item_key_base[hi] - item_key_base[lo]))
        terms = entry_weight[first] * entry_weight[second] * (1.0 / (alpha + 1.0 + shared_others))[key]
        if len(pairs):
            sims[r0:r1] = 2.0 * np.add.reduceat(terms, pair_start)
    sim = sp.csr_matrix((sims, (run_item, run_col)), shape=(n_block, x.shape[1]))
    return sim, int(run_pairs.sum())


def _chunks(pairs: np.ndarray, key_space: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive block-item ranges with at most `limit` user pairs and pair counters (an item
    over the limit is a range alone)."""
    cum_pairs, cum_keys = np.r_[0, np.cumsum(pairs)], np.r_[0, np.cumsum(key_space)]
    lo = 0
    while lo < len(pairs):
        hi = min(
            np.searchsorted(cum_pairs, cum_pairs[lo] + limit, side="right"),
            np.searchsorted(cum_keys, cum_keys[lo] + limit, side="right"),
        ) - 1
        hi = max(int(hi), lo + 1)
        yield lo, hi
        lo = hi


def neighbour_table(blocks: Iterator[tuple[int, sp.csr_matrix]], n_items: int, top_k: int) -> NeighbourTable:
    """Assemble a top-k table from similarity blocks."""
    neighbours = np.full((n_items, top_k), -1, dtype=np.int64)
    scores = np.zeros((n_items, top_k))
    for start, sim in blocks:
        stop = start + sim.shape[0]
        neighbours[start:stop], scores[start:stop] = top_k_per_row(sim, top_k)
    return NeighbourTable(neighbours, scores)


def itemcf(positives: sp.spmatrix, cfg: ItemCFConfig, seed: int = 0, budget: int = DEFAULT_BUDGET) -> NeighbourTable:
    """ItemCF top-k neighbour table of a users x items positives matrix."""
    return neighbour_table(itemcf_blocks(positives, cfg, seed, budget), positives.shape[1], cfg.top_k)


def swing(positives: sp.spmatrix, cfg: SwingConfig, seed: int = 0, budget: int = DEFAULT_BUDGET) -> NeighbourTable:
    """Swing top-k neighbour table of a users x items positives matrix."""
    return neighbour_table(swing_blocks(positives, cfg, seed, budget), positives.shape[1], cfg.top_k)


def recent_items(events: Events, n_items: int, n_recent: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """(sorted user ids, binary users x items CSR with an empty last row): each user's `n_recent`
    distinct items of latest positive (events are in time order)."""
    users, rows = user_index(events.user_id)
    key = rows * n_items + events.item
    order = np.argsort(key, kind="stable")
    key = key[order]
    latest_event = np.roll(run_starts(key), -1)  # last event of each (user, item)
    latest, key = order[latest_event], key[latest_event]
    user = key // n_items
    by_recency = np.lexsort((-latest, user))
    user, item = user[by_recency], key[by_recency] % n_items
    recent = (np.arange(len(user)) - np.searchsorted(user, user)) < n_recent
    m = sp.csr_matrix((np.ones(int(recent.sum())), (user[recent], item[recent])), shape=(len(users), n_items))
    return users, with_empty_row(m)


class U2I2I:
    """U2I2I: score(candidate) = Σ over the user's `seed_items` most recent positives of
    sim(seed, candidate) in a neighbour table; training positives excluded."""

    def __init__(self, name: str, table: NeighbourTable, events: Events, seed_items: int):
        self.name = name
        self.table = table
        self.events = events
        self.n_items = len(table.neighbours)
        self.users, self.seeds = recent_items(events, self.n_items, seed_items)
        self.sim = table.matrix()
        self.users_per_block = max(1, DEFAULT_BUDGET // (seed_items * table.neighbours.shape[1]))

    @classmethod
    def itemcf(cls, catalogue: Catalogue, events: Events, cfg: RetrievalConfig, seed: int = 0) -> U2I2I:
        """Fit ItemCF on the window's positives."""
        table = itemcf(user_item_matrix(events, len(catalogue))[1], cfg.itemcf, seed)
        return cls("itemcf", table, events, cfg.seed_items)

    @classmethod
    def swing(cls, catalogue: Catalogue, events: Events, cfg: RetrievalConfig, seed: int = 0) -> U2I2I:
        """Fit Swing on the window's positives."""
        table = swing(user_item_matrix(events, len(catalogue))[1], cfg.swing, seed)
        return cls("swing", table, events, cfg.seed_items)

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(user_ids), k), dtype=np.int64)
        for lo in range(0, len(user_ids), self.users_per_block):
            ids = user_ids[lo : lo + self.users_per_block]
            scores = self.seeds[lookup_rows(self.users, ids)] @ self.sim
            out[lo : lo + len(ids)] = top_k_items(scores, k, seen_matrix(self.events, ids, self.n_items))
        return out
