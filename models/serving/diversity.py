"""The feed's diversity stage: greedy MMR and DPP re-ranking under spacing rules (full ranking), and
the interest-then-diverse cut (pre-ranking).

sim(i, j) is the dot product of rows of `vectors`, which callers pass L2-normalised (so sim is the
cosine and S = vectors·vectorsᵀ is PSD). Full ranking fills the feed one slot at a time:

- MMR: argmax η·rel_i + (1−η)·div_i, div_i = −max sim(i, j) over the last `window` picks (all picks
  without a window; div = 0 before the first pick).
- DPP: argmax det(L_{Y∪{i}}), L = Diag(q)·S·Diag(q), q_i = exp(α·rel_i), α = θ/(2(1−θ)), Y the last
  `window`−1 picks (all picks without a window), so the window holds the new pick and the w−1 before
  it, as in the paper: Chen, Zhang & Zhou, "Fast Greedy MAP Inference for Determinantal Point Process
  to Improve Recommendation Diversity", NeurIPS 2018, Algorithms 1 (incremental Cholesky) and 2
  (sliding window: the oldest pick leaves the factor). log det L_Y = θ/(1−θ)·Σ_Y rel + log det S_Y,
  so θ trades relevance against diversity as η does in MMR. The Cholesky runs on S and the objective
  in log space (no rel range overflows exp) and L is never formed: O(N·(d + k)) per pick without a
  window (k picks so far), O(N·(d + w²)) with one; O(N·(d + min(k, w))) memory.

Spacing rules are hard constraints of the same loop: an item bars the next `category_gap` slots to
its category (category_l2) and the next `cluster_gap` slots to its content cluster. A slot where no
remaining candidate satisfies them is *relaxed*: it takes the best candidate among those with the
fewest conflicts (earlier picks within a gap sharing its category, plus those sharing its cluster;
the pairs `spacing_violations` counts) and its position is reported in `Selection.relaxed`.

Exact ties go to the lower index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import NamedTuple

import numpy as np

# DPP: a candidate whose squared distance to the span of the window's vectors is at most this adds no
# volume (det ≈ 0): it ranks after every candidate that does, by relevance among its peers.
EPSILON = 1e-10


class Selection(NamedTuple):
    """A greedy feed: `items`, candidate indices in feed order; `relaxed`, the slots (0-based
    positions in `items`) where no remaining candidate satisfied the spacing rules."""

    items: np.ndarray
    relaxed: np.ndarray


def spacing_violations(categories: Sequence[int] | np.ndarray | None, clusters: Sequence[int] | np.ndarray | None,
                       category_gap: int = 5, cluster_gap: int = 10) -> int:
    """Pairs of feed positions p < p' ≤ p + category_gap with the same category, plus pairs
    p < p' ≤ p + cluster_gap with the same cluster (codes in feed order; None or gap 0: no rule)."""
    return _close_pairs(categories, category_gap) + _close_pairs(clusters, cluster_gap)


def mmr(rel: np.ndarray, vectors: np.ndarray, k: int, eta: float, window: int | None = None,
        categories: np.ndarray | None = None, clusters: np.ndarray | None = None,
        category_gap: int = 5, cluster_gap: int = 10) -> Selection:
    """Greedy MMR feed of min(k, N) candidates: each slot takes argmax η·rel_i − (1−η)·max sim(i, j)
    over the last `window` picks (all picks when None), under the spacing rules (module docstring).
    rel: (N,); vectors: (N, d) L2-normalised; categories, clusters: (N,) int codes or None (no rule)."""
    rel, vectors, categories, clusters = _inputs(rel, vectors, categories, clusters)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    _check(k, window)
    # window: the similarity rows of the last `window` picks; none: one row, the running max over all picks
    rows: deque[np.ndarray] = deque(maxlen=window or 1)

    def keys() -> tuple[np.ndarray, ...]:
        return (eta * rel - (1 - eta) * np.max(rows, axis=0),) if rows else (eta * rel,)

    def add(j: int) -> None:
        sim = vectors @ vectors[j]
        rows.append(sim if window or not rows else np.maximum(rows[0], sim))

    return _greedy(len(rel), k, keys, add, categories, clusters, category_gap, cluster_gap)


def dpp(rel: np.ndarray, vectors: np.ndarray, k: int, theta: float, window: int | None = None,
        categories: np.ndarray | None = None, clusters: np.ndarray | None = None,
        category_gap: int = 5, cluster_gap: int = 10) -> Selection:
    """Greedy DPP MAP feed of min(k, N) candidates: each slot takes argmax det(L_{Y∪{i}}) with Y the
    last `window`−1 picks (all picks when None), under the spacing rules (module docstring).
    θ in [0, 1): 0 is diversity only, → 1 relevance only. Once no allowed candidate adds volume (more
    picks in the window than the vectors' rank), slots go by relevance. Arguments as in `mmr`."""
    rel, vectors, categories, clusters = _inputs(rel, vectors, categories, clusters)
    if not 0 <= theta < 1:
        raise ValueError(f"theta must be in [0, 1), got {theta}")
    _check(k, window)
    n = len(rel)
    log_q2 = theta / (1 - theta) * rel  # log q_i²
    s2 = np.einsum("ij,ij->i", vectors, vectors)  # squared distance of each vector to the basis' span
    basis = np.empty((min(k, n, window or n), n))  # rows: every candidate's coordinates on an orthonormal basis
    held: deque[int] = deque()  # the picks spanning the basis, one per row, oldest first
    recent: deque[int] = deque()  # the last window−1 picks (window only)

    def keys() -> tuple[np.ndarray, ...]:
        volume = s2 > EPSILON
        return volume, np.where(volume, log_q2 + np.log(np.maximum(s2, EPSILON)), rel)

    def add(j: int) -> None:
        m = len(held)
        if s2[j] > EPSILON:  # Algorithm 1: Cholesky row of j; a pick in the span adds nothing
            basis[m] = (vectors @ vectors[j] - basis[:m, j] @ basis[:m]) / np.sqrt(s2[j])
            s2[:] -= basis[m] ** 2
            held.append(j)
        if window is not None:
            recent.append(j)
            if len(recent) == window:  # the oldest pick leaves the window
                gone = recent.popleft()
                if held and held[0] == gone:
                    _drop_oldest(basis, held, s2)

    return _greedy(n, k, keys, add, categories, clusters, category_gap, cluster_gap)


def interest_then_diverse(rel: np.ndarray, vectors: np.ndarray, n_interest: int, n_diverse: int,
                          eta: float) -> np.ndarray:
    """Pre-ranking cut: the top `n_interest` candidates by rel (in rel order), then `n_diverse` more,
    each the argmax of η·rel_i − (1−η)·max sim(i, j) over ALL items selected so far (no window;
    div = 0 before the first pick). Indices in selection order; fewer when N is smaller. One (N, n_interest)
    similarity block up front, then O(N·d) per pick (the scores updated in place)."""
    rel, vectors, _, _ = _inputs(rel, vectors, None, None)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    n = len(rel)
    picks = np.argsort(-rel, kind="stable")[:max(n_interest, 0)].tolist()
    n_more = min(max(n_diverse, 0), n - len(picks))
    if not n_more:
        return np.array(picks, dtype=np.int64)
    base, c = eta * rel, 1 - eta
    base[picks] = -np.inf  # a taken candidate scores -inf from here on
    max_sim = (vectors @ vectors[picks].T).max(axis=1) if picks else np.zeros(n)
    score = base - c * max_sim
    for _ in range(n_more):
        j = int(np.argmax(score))
        sim = vectors @ vectors[j]
        if picks:
            np.maximum(max_sim, sim, out=max_sim)
        else:
            max_sim = sim.copy()
        picks.append(j)
        base[j] = -np.inf
        np.multiply(max_sim, c, out=sim)
        np.subtract(base, sim, out=score)
    return np.array(picks, dtype=np.int64)


def interest_then_diverse_rows(rel: np.ndarray, items: np.ndarray, bounds: np.ndarray, vectors: np.ndarray,
                               n_interest: int, n_diverse: int, eta: float) -> np.ndarray:
    """`interest_then_diverse` for a block of users: candidates bounds[r]:bounds[r + 1] are user r's,
    with relevance `rel` and vectors `vectors[items]`. The selected candidate indices, ascending."""
    chosen = [lo + np.sort(interest_then_diverse(rel[lo:hi], vectors[items[lo:hi]], n_interest, n_diverse, eta))
              for lo, hi in pairwise(bounds)]
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _greedy(n: int, k: int, keys: Callable[[], tuple[np.ndarray, ...]], add: Callable[[int], None],
            categories: np.ndarray | None, clusters: np.ndarray | None, category_gap: int, cluster_gap: int) -> Selection:
    """Fill min(k, n) slots, each with the remaining candidate of fewest spacing conflicts, then
    lexicographically largest keys(), then lowest index; add(pick) updates the keys."""
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    relaxed: list[int] = []
    for slot in range(min(k, n)):
        conflicts = np.asarray(_conflicts(categories, picks, category_gap) + _conflicts(clusters, picks, cluster_gap))
        j = _lex_argmax(~taken, (-conflicts, *keys()) if conflicts.ndim else keys())  # 0-d: no rule in force
        if conflicts.ndim and conflicts[j]:
            relaxed.append(slot)
        taken[j] = True
        picks.append(j)
        add(j)
    return Selection(np.array(picks, dtype=np.int64), np.array(relaxed, dtype=np.int64))


def _lex_argmax(mask: np.ndarray, keys: tuple[np.ndarray, ...]) -> int:
    """Lowest index among `mask` whose keys are lexicographically largest (the last key finite)."""
    *first, last = keys
    for key in first:
        mask = mask & (key == key[mask].max())
    return int(np.argmax(np.where(mask, last, -np.inf)))


def _conflicts(codes: np.ndarray | None, picks: list[int], gap: int) -> np.ndarray | int:
    """Per candidate: how many of the last `gap` picks share its (dense) code (0 without a rule)."""
    if codes is None or gap <= 0 or not picks:
        return 0
    return np.bincount(codes[picks[-gap:]], minlength=len(codes))[codes]


def _close_pairs(codes: Sequence[int] | np.ndarray | None, gap: int) -> int:
    """Pairs of positions at most `gap` apart holding the same code."""
    if codes is None:
        return 0
    codes = np.asarray(codes)
    return sum(int(np.count_nonzero(codes[lag:] == codes[:-lag])) for lag in range(1, min(gap, len(codes) - 1) + 1))


def _drop_oldest(basis: np.ndarray, held: deque[int], s2: np.ndarray) -> None:
    """The window step: remove the oldest held pick from the basis. A complete QR of the other held
    picks' coordinates splits the window's span into theirs (first m−1 directions) and the direction
    only the oldest spanned (the last): rotate the basis onto it, give that row back to s2, drop it.
    (The paper downdates the Cholesky factor by m−1 Givens rotations, O(N·m); one QR and one matmul,
    O(N·m²), is faster for the windows a feed uses.)"""
    m = len(held)
    q, _ = np.linalg.qr(basis[:m, list(held)[1:]], mode="complete")
    rotated = q.T @ basis[:m]
    s2 += rotated[m - 1] ** 2
    basis[:m - 1] = rotated[:m - 1]
    held.popleft()


def _inputs(rel: np.ndarray, vectors: np.ndarray, categories: np.ndarray | None,
            clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """float64 rel (N,) and vectors (N, d); codes (N,) as dense ints 0.. (only equality matters) or None.
    ValueError on shapes or non-finite values."""
    rel = np.asarray(rel, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    if rel.ndim != 1 or vectors.ndim != 2 or len(vectors) != len(rel):
        raise ValueError(f"need rel (N,) and vectors (N, d), got {rel.shape} and {vectors.shape}")
    if not (np.isfinite(rel).all() and np.isfinite(vectors).all()):
        raise ValueError("rel or vectors have non-finite values")
    codes = [None if c is None else np.asarray(c) for c in (categories, clusters)]
    if any(c is not None and c.shape != rel.shape for c in codes):
        raise ValueError("categories and clusters must be (N,) like rel")
    dense = [None if c is None else np.unique(c, return_inverse=True)[1] for c in codes]
    return rel, vectors, dense[0], dense[1]


def _check(k: int, window: int | None) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
