"""The slow, straightforward Swing reference, written as the formula reads (plain Python loops
over item pairs and users). Used only to check models/retrieval/i2i.py: by tests/test_i2i.py and by the
comparison in benchmarks/bench_i2i.py. Never use it in the pipeline: its cost grows with
n_items² and |W_i ∩ W_j|² · |I_u|.

It takes the (already capped) binary users x items matrix and returns the dense items x items
similarity matrix with a zero diagonal.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.retrieval.cf_common import DAMPING_OFFSET, DAMPING_POWER


def _sets(positives: sp.spmatrix) -> tuple[list[set[int]], list[set[int]]]:
    """(items of each user, users of each item)."""
    m = sp.csr_matrix(positives)
    items_of = [set(map(int, m.indices[m.indptr[u] : m.indptr[u + 1]])) for u in range(m.shape[0])]
    users_of: list[set[int]] = [set() for _ in range(m.shape[1])]
    for u, items in enumerate(items_of):
        for i in items:
            users_of[i].add(u)
    return items_of, users_of


def _weight(items: set[int], heavy_user_damping: bool) -> float:
    return (len(items) + DAMPING_OFFSET) ** DAMPING_POWER if heavy_user_damping else 1.0


def swing_reference(positives: sp.spmatrix, alpha: float, heavy_user_damping: bool) -> np.ndarray:
    """sim(i, j) = Σ_{u1 ∈ W_i∩W_j} Σ_{u2 ∈ W_i∩W_j, u2 != u1} w_u1·w_u2 / (α + |I_u1 ∩ I_u2|)."""
    items_of, users_of = _sets(positives)
    n = len(users_of)
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            common = users_of[i] & users_of[j]
            for u1 in common:
                for u2 in common:
                    if u1 != u2:
                        w = _weight(items_of[u1], heavy_user_damping) * _weight(items_of[u2], heavy_user_damping)
                        sim[i, j] += w / (alpha + len(items_of[u1] & items_of[u2]))
    return sim

