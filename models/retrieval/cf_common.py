"""Building blocks shared by the collaborative-filtering channels (models/retrieval/i2i.py,
models/retrieval/cf_channels.py): the capped positives matrix, heavy-user weights, row lookups and top-k per
row of a sparse score matrix, the binary users x items matrix of a window (vectorised, no loop over rows; only stored entries are candidates,
ties go to the lower column, so results are deterministic).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.common.tables import Events

MAX_BUCKETS = 1024  # histogram resolution of the top-k pre-filter (fewer for short rows)
DAMPING_OFFSET, DAMPING_POWER = 5.0, -0.35  # heavy-user weight (|I_u| + 5)^-0.35


def binary(m: sp.spmatrix) -> sp.csr_matrix:
    """The 0/1 float64 CSR (sorted indices, no duplicates) of a matrix's stored non-zeros."""
    out = sp.csr_matrix(m, dtype=np.float64, copy=True)
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def cap_users_per_item(m: sp.csr_matrix, max_users: int, seed: int) -> sp.csr_matrix:
    """Keep at most `max_users` users per item (column) of a users x items CSR: each user draws one
    seeded random priority shared by all items, and an item keeps its users of lowest priority.
    This coordinated sampling keeps co-occurrences: a kept user is kept on all their items, up to
    each item's own cut-off. Returns `m` itself when no item has more users."""
    if not m.nnz or np.bincount(m.indices, minlength=m.shape[1]).max() <= max_users:
        return m
    by_priority = np.random.default_rng(seed).permutation(m.shape[0])  # row i: the i-th lowest priority
    ranked = m[by_priority].tocsc()  # rows in priority order, ascending within each column
    position = np.arange(ranked.nnz) - np.repeat(ranked.indptr[:-1], np.diff(ranked.indptr))
    keep = position < max_users
    items = np.repeat(np.arange(m.shape[1]), np.diff(ranked.indptr))[keep]
    out = sp.csr_matrix((ranked.data[keep], (by_priority[ranked.indices[keep]], items)), shape=m.shape)
    out.sort_indices()
    return out


def user_weights(m: sp.csr_matrix, heavy_user_damping: bool) -> np.ndarray:
    """Per user (row): (|I_u| + 5)^-0.35 with damping, else 1."""
    if not heavy_user_damping:
        return np.ones(m.shape[0])
    return (np.diff(m.indptr) + DAMPING_OFFSET) ** DAMPING_POWER


def row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    """Each row scaled to unit L2 norm (empty rows stay empty)."""
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ m)


def column_cost(m: sp.csr_matrix) -> np.ndarray:
    """Per column c of a sparse matrix: Σ over its rows r of the entries of row r (the work and the
    output bound of that column's row in m^T @ m)."""
    return m.T.astype(bool).astype(np.float64) @ np.diff(m.indptr).astype(np.float64)


def cost_blocks(cost: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges [start, stop) whose summed cost stays within `budget` (an element over
    budget is a range alone)."""
    cum = np.r_[0.0, np.cumsum(cost)]
    blocks, start = [], 0
    while start < len(cost):
        stop = max(int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1, start + 1)
        blocks.append((start, stop))
        start = stop
    return blocks


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Mask of the positions where any of the equally long key arrays changes value (and 0)."""
    change = np.zeros(len(keys[0]), dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return change


def lookup_rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in `sorted_ids`, or len(sorted_ids) for an unknown id (the caller keeps an
    empty row there)."""
    pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    known = (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), dtype=bool)
    return np.where(known, pos, len(sorted_ids))


def with_empty_row(m: sp.csr_matrix) -> sp.csr_matrix:
    """`m` with one empty row appended (the row `lookup_rows` gives unknown ids)."""
    return sp.csr_matrix((m.data, m.indices, np.r_[m.indptr, m.indptr[-1]]), shape=(m.shape[0] + 1, m.shape[1]))


def _candidates(data: np.ndarray, indptr: np.ndarray, k: int) -> np.ndarray:
    """Mask of a superset of each row's top k entries. Rows with more than k entries get a
    histogram of their values in equal-width buckets between the row's min and max; entries below
    the bucket holding the k-th largest value cannot be in the top k (the bucket is monotone in
    the value, so ties and rounding never drop a top-k entry)."""
    counts = np.diff(indptr)
    keep = np.ones(len(data), dtype=bool)
    long_rows = np.flatnonzero(counts > k)
    if not len(long_rows):
        return keep
    lengths = counts[long_rows]
    entries = np.flatnonzero(np.repeat(counts > k, counts))
    values = data[entries]
    local = np.repeat(np.arange(len(long_rows)), lengths)
    row_start = np.cumsum(lengths) - lengths
    lo, hi = np.minimum.reduceat(values, row_start), np.maximum.reduceat(values, row_start)
    buckets = int(min(MAX_BUCKETS, max(16, lengths.mean())))
    span = np.where(hi > lo, hi - lo, 1.0)
    bucket = np.minimum(((values - lo[local]) / span[local] * buckets).astype(np.int64), buckets - 1)
    hist = np.bincount(local * buckets + bucket, minlength=len(long_rows) * buckets).reshape(-1, buckets)
    threshold = buckets - 1 - np.argmax(np.cumsum(hist[:, ::-1], axis=1) >= k, axis=1)
    keep[entries] = bucket >= threshold[local]
    return keep


def top_k_per_row(scores: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, values), each (n_rows, k): every row's k largest stored entries, best first
    (ties: lower column first); columns -1 and values 0.0 where a row has fewer entries."""
    scores = sp.csr_matrix(scores)
    scores.sum_duplicates()
    n = scores.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(scores.indptr))
    data = scores.data.astype(np.float64, copy=False)
    keep = _candidates(data, scores.indptr, k)
    rows, data, cols = rows[keep], data[keep], scores.indices[keep].astype(np.int64)
    order = np.lexsort((cols, -data, rows))
    rows, data, cols = rows[order], data[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within the row
    top = rank < k
    out_cols = np.full((n, k), -1, dtype=np.int64)
    out_vals = np.zeros((n, k), dtype=np.float64)
    out_cols[rows[top], rank[top]] = cols[top]
    out_vals[rows[top], rank[top]] = data[top]
    return out_cols, out_vals


def top_k_matrix(cols: np.ndarray, vals: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """A top-k (columns, values) pair (as top_k_per_row returns) as a sparse rows x n_cols matrix."""
    r, slot = np.nonzero(cols >= 0)
    return sp.csr_matrix((vals[r, slot], (r, cols[r, slot])), shape=(len(cols), n_cols))


def top_k_items(scores: sp.csr_matrix, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Retrieval output: (n_rows, k) int64 columns of the k best positive scores per row, best
    first, -1 padded, the (row, column) cells stored in `exclude` left out."""
    scores = sp.csr_matrix(scores, dtype=np.float64, copy=True)
    scores.data[scores.data <= 0] = 0.0
    if exclude is not None:
        scores = without(scores, exclude)
    scores.eliminate_zeros()
    return top_k_per_row(scores, k)[0]


def without(m: sp.csr_matrix, mask: sp.csr_matrix) -> sp.csr_matrix:
    """`m` less the entries at the cells stored in `mask`."""
    out = sp.csr_matrix(m - m.multiply(mask.astype(bool)))
    out.eliminate_zeros()
    return out


def user_index(user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique user ids, row of each input id)."""
    users, rows = np.unique(user_ids, return_inverse=True)
    return users, rows.astype(np.int64)


def user_item_matrix(events: Events, n_items: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """(user ids, binary users x items CSR): who had at least one event on which item."""
    users, rows = user_index(events.user_id)
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, events.item)), shape=(len(users), n_items)
    )
    m.data[:] = 1.0  # duplicates summed by the constructor: back to binary
    return users, m
