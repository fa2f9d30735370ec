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

A block of users (`mmr_rows`, `dpp_rows`: the funnel's call) runs the same loop in lockstep,
ROWS_CHUNK users at a time: their candidates padded to (G, N) arrays (padding taken from the start),
one slot of every user per numpy step. The spacing counts move by comparing codes with the slot's
picks and with the picks leaving each gap; the DPP factors are (G, rows, N) arrays whose rows past a
user's held picks stay zero, and the window's QR steps run stacked. Each user gets the feed of
`mmr` / `dpp`, the single-user loops (one user's request, and the reference of the tests); a step
of 32 users costs little more than one user's, whose loop is mostly numpy call overhead.

Pre-ranking (`interest_then_diverse`): the top n_interest by rel, then greedy picks of
η·rel_i − (1−η)·max sim(i, j) over everything selected (no window). Scores only fall as picks are
added (the max similarity only grows), so a score computed against the picks so far bounds the
candidate's later scores from above, and the greedy runs lazily, with the same picks:

- one (n_interest, N) similarity block scores every candidate after the interest picks; candidates
  wait in a queue ordered by their last computed score, their bound;
- a *round* refreshes the head of the queue against the picks made since (one matrix product) and
  keeps as *leaders* those whose score beats τ, the best bound left behind (doubling the head until
  LEADERS/2 do). While the best leader beats τ it is the greedy's next pick; the leaders'
  similarities to each other (one small block) keep their scores exact as they are picked;
- a *run* takes several leaders at once: in score order, the next leader is picked as long as no
  earlier pick of the run is more similar to it than its nearest pick so far (its score is unchanged,
  so it is still the argmax);
- when no leader beats τ, the refreshed head goes back into the queue by its new bounds.

Only the candidates that get near the top are compared with later picks (about a third of them on
the serving benchmark), in blocks rather than one product per pick.

Exact ties go to the lower index. The lockstep and lazy forms multiply vectors in other layouts than
the single-user loops, and BLAS rounding depends on the layout: a score may differ in its last bit,
which changes a pick only between two candidates that close without being tied.
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
# interest_then_diverse: a round needs LEADERS/2 leaders; a run takes at most RUN picks.
LEADERS = 64
RUN = 32
_UPPER = np.triu(np.ones((RUN, RUN), dtype=bool), 1)  # pairs (earlier pick of a run, later one)
ROWS_CHUNK = 32  # users per lockstep chunk of mmr_rows / dpp_rows (their arrays stay in cache)

RowKeys = Callable[[int], tuple[np.ndarray, ...]]  # keys(slot): (G, N) keys of a chunk, compared as in _lex_argmax
RowAdd = Callable[[int, np.ndarray, np.ndarray], None]  # add(slot, picks of the slot, (G, slots) picks so far)


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
    rel: (N,); vectors: (N, d) L2-normalised; categories, clusters: (N,) int codes or None (no rule).
    One user's loop: `mmr_rows` runs a block of users and matches it user by user (tests)."""
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
    picks in the window than the vectors' rank), slots go by relevance. Arguments as in `mmr`; one
    user's loop, the reference of `dpp_rows`."""
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


def mmr_rows(rel: np.ndarray, vectors: np.ndarray, bounds: np.ndarray, k: np.ndarray, eta: float,
             window: int | None = None, categories: np.ndarray | None = None, clusters: np.ndarray | None = None,
             category_gap: int = 5, cluster_gap: int = 10) -> list[Selection]:
    """`mmr` for a block of users at once: user r's candidates are rows bounds[r]:bounds[r + 1] of rel,
    vectors and the codes, k[r] its slots; its Selection indexes its own rows (0 = bounds[r]). One slot
    of every user per step (module docstring); per user the feed of `mmr`, its reference."""
    bounds, k = _check_rows(bounds, k, len(rel), window)
    if len(k) == 1:  # one user (an online request): its own loop, without the chunk's padding
        return [mmr(rel, vectors, int(k[0]), eta, window, categories, clusters, category_gap, cluster_gap)]
    rel, vectors, categories, clusters = _inputs(rel, vectors, categories, clusters, block=True)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")

    def start(rel: np.ndarray, vectors: np.ndarray) -> tuple[RowKeys, RowAdd]:
        users = np.arange(len(rel))
        # window: the similarity rows of the last `window` picks (a ring); none: one row, the running max
        sims = np.full((len(rel), window or 1, rel.shape[1]), -np.inf)

        def keys(slot: int) -> tuple[np.ndarray, ...]:
            return (eta * rel - (1 - eta) * sims.max(axis=1),) if slot else (eta * rel,)

        def add(slot: int, j: np.ndarray, picks: np.ndarray) -> None:
            sim = np.matmul(vectors, vectors[users, j][:, :, None])[:, :, 0]
            if window:
                sims[:, slot % window] = sim
            else:
                np.maximum(sims[:, 0], sim, out=sims[:, 0])

        return keys, add

    return _greedy_rows(rel, vectors, bounds, k, start, categories, clusters, category_gap, cluster_gap)


def dpp_rows(rel: np.ndarray, vectors: np.ndarray, bounds: np.ndarray, k: np.ndarray, theta: float,
             window: int | None = None, categories: np.ndarray | None = None, clusters: np.ndarray | None = None,
             category_gap: int = 5, cluster_gap: int = 10) -> list[Selection]:
    """`dpp` for a block of users at once, arguments as in `mmr_rows`; per user the feed of `dpp`, its
    reference. The users' Cholesky factors are padded (G, rows, N) arrays whose rows past a user's
    held picks are zero; the window's QR steps run stacked, one per group of equal factor size."""
    bounds, k = _check_rows(bounds, k, len(rel), window)
    if len(k) == 1:  # one user (an online request): its own loop, without the chunk's padding
        return [dpp(rel, vectors, int(k[0]), theta, window, categories, clusters, category_gap, cluster_gap)]
    rel, vectors, categories, clusters = _inputs(rel, vectors, categories, clusters, block=True)
    if not 0 <= theta < 1:
        raise ValueError(f"theta must be in [0, 1), got {theta}")

    def start(rel: np.ndarray, vectors: np.ndarray) -> tuple[RowKeys, RowAdd]:
        users, n = np.arange(len(rel)), rel.shape[1]
        log_q2 = theta / (1 - theta) * rel
        s2 = np.einsum("gnd,gnd->gn", vectors, vectors)
        basis = np.zeros((len(rel), min(int(k.max(initial=0)), n, window or n), n))
        held = np.zeros(basis.shape[:2], dtype=np.int64)  # per user, the picks spanning its basis rows
        size = np.zeros(len(rel), dtype=np.int64)  # per user, its held picks

        def keys(slot: int) -> tuple[np.ndarray, ...]:
            volume = s2 > EPSILON
            return volume, np.where(volume, log_q2 + np.log(np.maximum(s2, EPSILON)), rel)

        def add(slot: int, j: np.ndarray, picks: np.ndarray) -> None:
            s2j = s2[users, j]
            grow = s2j > EPSILON  # Algorithm 1 for the users whose pick adds volume
            dots = np.matmul(vectors, vectors[users, j][:, :, None])[:, :, 0]
            row = (dots - np.einsum("gb,gbn->gn", basis[users, :, j], basis)) / np.sqrt(np.where(grow, s2j, 1.0))[:, None]
            if grow.all():
                basis[users, size], held[users, size] = row, j
            else:  # the others add a zero row at their next free row (a user with none left is done)
                row[~grow] = 0.0
                m = np.minimum(size, basis.shape[1] - 1)
                basis[users, m] = np.where(grow[:, None], row, basis[users, m])
                held[users, m] = np.where(grow, j, held[users, m])
            s2[:] -= row ** 2
            size[:] += grow
            if window is not None and slot + 1 >= window:  # the pick `window` slots back leaves the window
                drop = (size > 0) & (held[:, 0] == picks[:, slot + 1 - window])
                for m in np.unique(size[drop]):
                    _drop_oldest_rows(basis, held, size, s2, drop & (size == m))

        return keys, add

    return _greedy_rows(rel, vectors, bounds, k, start, categories, clusters, category_gap, cluster_gap)


def interest_then_diverse(rel: np.ndarray, vectors: np.ndarray, n_interest: int, n_diverse: int,
                          eta: float) -> np.ndarray:
    """Pre-ranking cut: the top `n_interest` candidates by rel (in rel order), then `n_diverse` more,
    each the argmax of η·rel_i − (1−η)·max sim(i, j) over ALL items selected so far (no window;
    div = 0 before the first pick). Indices in selection order; fewer when N is smaller. One
    (N, n_interest) similarity block up front, then the lazy rounds of `_diverse_picks`."""
    rel, vectors, _, _ = _inputs(rel, vectors, None, None)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    interest = _top(rel, n_interest)
    picks = np.empty(len(interest) + min(max(n_diverse, 0), len(rel) - len(interest)), dtype=np.int64)
    picks[:len(interest)] = interest
    if len(picks) > len(interest):
        _diverse_picks(eta * rel, 1 - eta, vectors, picks, len(interest))
    return picks


def interest_then_diverse_rows(rel: np.ndarray, items: np.ndarray, bounds: np.ndarray, vectors: np.ndarray,
                               n_interest: int, n_diverse: int, eta: float) -> np.ndarray:
    """`interest_then_diverse` for a block of users: candidates bounds[r]:bounds[r + 1] are user r's,
    with relevance `rel` and vectors `vectors[items]`. The selected candidate indices, ascending
    (a user with at most n_interest + n_diverse candidates keeps them all)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    keep = max(n_interest, 0) + max(n_diverse, 0)
    chosen = [np.arange(lo, hi) if hi - lo <= keep else
              lo + np.sort(interest_then_diverse(rel[lo:hi], vectors[items[lo:hi]], n_interest, n_diverse, eta))
              for lo, hi in pairwise(bounds)]
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def minmax_rows(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Row r's values values[bounds[r]:bounds[r + 1]] scaled to [0, 1] as (x − min) / (max − min),
    the row's min and max (all 0 where they are equal); bounds run from 0 to len(values)."""
    values = np.asarray(values, dtype=np.float64)
    bounds = np.asarray(bounds, dtype=np.int64)
    if not len(values):
        return values.copy()
    if bounds[0] != 0 or bounds[-1] != len(values):
        raise ValueError(f"bounds run from {bounds[0]} to {bounds[-1]}, not from 0 to {len(values)}")
    sizes = np.diff(bounds)
    starts = bounds[:-1][sizes > 0]  # the rows with values, back to back
    row = np.repeat(np.arange(len(starts)), sizes[sizes > 0])
    low = np.minimum.reduceat(values, starts)[row]
    span = np.maximum.reduceat(values, starts)[row] - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0)


def _diverse_picks(base: np.ndarray, c: float, vectors: np.ndarray, picks: np.ndarray, k: int) -> None:
    """Fill picks[k:] in place, each the argmax of base_i − c·max sim(i, j) over picks so far
    (base_i alone before the first), ties to the lower index: the lazy rounds and runs of the module
    docstring."""
    n, goal = len(base), len(picks)
    if not k:
        picks[0] = np.argmax(base)
        k = 1
    max_sim = (vectors[picks[:k]] @ vectors.T).max(axis=0)  # over picks[:seen[i]]
    bound = base - c * max_sim  # exact while seen[i] == k, an upper bound after; -inf once taken
    bound[picks[:k]] = -np.inf
    seen = np.full(n, k)
    queue = np.argsort(-bound)[:n - k]  # the candidates left, by bound, best first (any order of ties)
    take = LEADERS
    while k < goal:
        while True:  # refresh the head of the queue until LEADERS/2 of it beat the best bound behind it
            head = np.sort(queue[:take])
            stale = head[seen[head] < k]
            if len(stale):
                since = int(seen[stale].min())
                max_sim[stale] = np.maximum(max_sim[stale], (vectors[stale] @ vectors[picks[since:k]].T).max(axis=1))
                bound[stale] = base[stale] - c * max_sim[stale]
                seen[stale] = k
            tau = bound[queue[take]] if take < len(queue) else -np.inf
            ahead = bound[head] > tau
            if take >= len(queue) or np.count_nonzero(ahead) >= LEADERS // 2:
                break
            take *= 2  # the next round starts from this size, halved while more than 2·LEADERS get ahead
        leaders = head[ahead]  # ascending: a stable sort by score breaks ties by index
        lead_vectors = vectors[leaders]
        sims = lead_vectors @ lead_vectors.T
        lead_max, lead_base, lead_score = max_sim[leaders], base[leaders], bound[leaders]  # copies
        while k < goal:  # runs: the next leaders by score that no earlier pick of the run lowered
            alive = int(np.count_nonzero(lead_score > tau))
            if not alive:
                break
            order = np.argsort(-lead_score, kind="stable")[:min(RUN, goal - k, alive)]
            lowered = ((sims[order][:, order] > lead_max[order]) & _UPPER[:len(order), :len(order)]).any(axis=0)
            run = order[:int(np.argmax(lowered))] if lowered.any() else order
            picks[k:k + len(run)] = leaders[run]
            k += len(run)
            lead_base[run] = -np.inf  # taken
            np.maximum(lead_max, sims[run].max(axis=0), out=lead_max)
            lead_score = lead_base - c * lead_max
        max_sim[leaders], bound[leaders], seen[leaders] = lead_max, lead_score, k
        back = head[np.isfinite(bound[head])]  # the refreshed head, back into the queue by its new bounds
        back = back[np.argsort(-bound[back])]
        rest = queue[take:]
        at = np.searchsorted(-bound[rest], -bound[back]) + np.arange(len(back))  # positions in the new queue
        queue = np.empty(len(rest) + len(back), dtype=np.int64)
        queue[at] = back
        free = np.ones(len(queue), dtype=bool)
        free[at] = False
        queue[free] = rest
        if len(leaders) > 2 * LEADERS:
            take = max(LEADERS, take // 2)


def _top(values: np.ndarray, n: int) -> np.ndarray:
    """np.argsort(-values, kind="stable")[:n] (the n largest, largest first, ties to the lower index)
    in O(N + n log n)."""
    n = min(max(n, 0), len(values))
    if not n:
        return np.zeros(0, dtype=np.int64)
    if n == len(values):
        return np.argsort(-values, kind="stable")
    kth = np.partition(values, len(values) - n)[len(values) - n]  # the n-th largest
    top = np.flatnonzero(values > kth)
    top = np.r_[top, np.flatnonzero(values == kth)[:n - len(top)]]
    return top[np.argsort(-values[top], kind="stable")]


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


def _greedy_rows(rel: np.ndarray, vectors: np.ndarray, bounds: np.ndarray, k: np.ndarray,
                 start: Callable[[np.ndarray, np.ndarray], tuple[RowKeys, RowAdd]], categories: np.ndarray | None,
                 clusters: np.ndarray | None, category_gap: int, cluster_gap: int) -> list[Selection]:
    """`_greedy` for the users of a block, ROWS_CHUNK at a time in lockstep: their candidates padded to
    (G, N) (padding taken from the start), one slot of every user per step (a user past its
    min(k, N) slots keeps picking padding, discarded). start(rel, vectors) gives the chunk's keys(slot)
    and add(slot, picks of the slot, picks so far); the spacing counts move with each pick and with the
    pick leaving each gap."""
    rules = [(codes, gap) for codes, gap in ((categories, category_gap), (clusters, cluster_gap))
             if codes is not None and gap > 0]
    out: list[Selection] = []
    for lo in range(0, len(bounds) - 1, ROWS_CHUNK):
        first = bounds[lo:lo + ROWS_CHUNK + 1]
        sizes = np.diff(first)
        slots = np.minimum(k[lo:lo + len(sizes)], sizes)
        valid = np.arange(sizes.max(initial=0)) < sizes[:, None]
        if not valid.any():
            out += [Selection(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in sizes]
            continue
        rows = np.where(valid, first[:-1, None] + np.arange(valid.shape[1]), 0)  # padding: any row, taken
        keys, add = start(np.where(valid, rel[rows], 0.0), np.where(valid[..., None], vectors[rows], 0.0).astype(np.float64))
        codes = [(c[rows], gap) for c, gap in rules]
        conflicts = np.zeros(valid.shape, dtype=np.int64)
        taken = ~valid
        picks = np.zeros((len(sizes), int(slots.max())), dtype=np.int64)
        relaxed = np.zeros(picks.shape, dtype=bool)
        users = np.arange(len(sizes))
        for slot in range(picks.shape[1]):
            j = _lex_argmax_rows(~taken, conflicts if rules else None, keys(slot))
            picks[:, slot], relaxed[:, slot] = j, conflicts[users, j] > 0
            taken[users, j] = True
            for c, gap in codes:
                conflicts += c == c[users, j][:, None]
                if slot >= gap:
                    conflicts -= c == c[users, picks[:, slot - gap]][:, None]
            add(slot, j, picks)
        out += [Selection(picks[r, :slots[r]], np.flatnonzero(relaxed[r, :slots[r]])) for r in users]
    return out


def _lex_argmax_rows(mask: np.ndarray, conflicts: np.ndarray | None, keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """Per row, `_lex_argmax` over (-conflicts, *keys) (no conflicts: keys alone); garbage for an empty row."""
    if conflicts is not None:
        mask = mask & (conflicts == np.where(mask, conflicts, np.iinfo(np.int64).max).min(axis=1, keepdims=True))
    *first, last = keys
    for key in first:
        mask = mask & (key == np.where(mask, key, key.min()).max(axis=1, keepdims=True))
    return np.argmax(np.where(mask, last, -np.inf), axis=1)


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


def _drop_oldest_rows(basis: np.ndarray, held: np.ndarray, size: np.ndarray, s2: np.ndarray,
                      users: np.ndarray) -> None:
    """`_drop_oldest` for the `users` (a mask), who hold the same number m of picks: their m×(m−1) QRs
    stacked."""
    m = int(size[users][0])
    at = slice(None) if users.all() else users  # a view when every user of the chunk drops (the usual case)
    part = basis[at, :m]
    q, _ = np.linalg.qr(np.take_along_axis(part, held[at, None, 1:m], axis=2), mode="complete")
    rotated = np.matmul(q.transpose(0, 2, 1), part)
    s2[at] += rotated[:, m - 1] ** 2
    basis[at, :m - 1] = rotated[:, :m - 1]
    basis[at, m - 1] = 0.0
    held[at, :m - 1] = held[at, 1:m]
    size[at] -= 1


def _inputs(rel: np.ndarray, vectors: np.ndarray, categories: np.ndarray | None, clusters: np.ndarray | None,
            block: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """float64 rel (N,) and vectors (N, d); codes (N,) as dense ints 0.. (only equality matters) or None.
    A block (the `_rows` functions) keeps float32 vectors and the codes as given: its chunks are cast
    and compare codes for equality. ValueError on shapes or non-finite values."""
    rel = np.asarray(rel, dtype=np.float64)
    vectors = np.asarray(vectors)
    vectors = vectors if block and vectors.dtype == np.float32 else vectors.astype(np.float64, copy=False)
    if rel.ndim != 1 or vectors.ndim != 2 or len(vectors) != len(rel):
        raise ValueError(f"need rel (N,) and vectors (N, d), got {rel.shape} and {vectors.shape}")
    if not (np.isfinite(rel).all() and np.isfinite(vectors).all()):
        raise ValueError("rel or vectors have non-finite values")
    codes = [None if c is None else np.asarray(c) for c in (categories, clusters)]
    if any(c is not None and c.shape != rel.shape for c in codes):
        raise ValueError("categories and clusters must be (N,) like rel")
    if not block:
        codes = [None if c is None else np.unique(c, return_inverse=True)[1] for c in codes]
    return rel, vectors, codes[0], codes[1]


def _check_rows(bounds: np.ndarray, k: np.ndarray, n: int, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """bounds (0 = b_0 <= ... = n) and k, one per user, as int arrays; ValueError otherwise."""
    bounds, k = np.asarray(bounds, dtype=np.int64), np.asarray(k, dtype=np.int64)
    if bounds.ndim != 1 or not len(bounds) or bounds[0] != 0 or bounds[-1] != n or (np.diff(bounds) < 0).any():
        raise ValueError(f"bounds must rise from 0 to {n}")
    if k.shape != (len(bounds) - 1,):
        raise ValueError(f"need one k per user, got {k.shape} for {len(bounds) - 1} users")
    _check(int(k.min(initial=0)), window)
    return bounds, k


def _check(k: int, window: int | None) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
