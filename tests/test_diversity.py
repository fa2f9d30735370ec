"""Diversity stage (models/serving/diversity.py) against brute force: DPP picks against determinants
from numpy.linalg.det, MMR picks against the objective recomputed pair by pair, spacing rules and
relaxed slots against a scan of every remaining candidate, the interest-then-diverse cut against its
formula; windows that change the pick; edge cases."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from models.serving.diversity import (
    ROWS_CHUNK,
    dpp,
    dpp_rows,
    interest_then_diverse,
    interest_then_diverse_rows,
    minmax_rows,
    mmr,
    mmr_rows,
    spacing_violations,
)

SEEDS = range(150)
Codes = np.ndarray | None


# --- brute force ---------------------------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def last(picks: list[int], w: int) -> list[int]:
    return picks[max(0, len(picks) - w):]


def conflicts(i: int, picks: list[int], categories: Codes, clusters: Codes, category_gap: int, cluster_gap: int) -> int:
    n = 0
    if categories is not None and category_gap > 0:
        n += sum(categories[p] == categories[i] for p in last(picks, category_gap))
    if clusters is not None and cluster_gap > 0:
        n += sum(clusters[p] == clusters[i] for p in last(picks, cluster_gap))
    return n


def brute_greedy(n: int, k: int, objective: Callable[[int, list[int]], float], categories: Codes = None,
                 clusters: Codes = None, category_gap: int = 5, cluster_gap: int = 10) -> tuple[list[int], list[int]]:
    """Each slot: fewest conflicts, then the largest objective(i, picks), then the lowest index;
    returns (picks, slots where every remaining candidate had a conflict)."""
    picks: list[int] = []
    relaxed: list[int] = []
    for slot in range(min(k, n)):
        rest = [i for i in range(n) if i not in picks]
        c = {i: conflicts(i, picks, categories, clusters, category_gap, cluster_gap) for i in rest}
        if min(c.values()) > 0:
            relaxed.append(slot)
        picks.append(max(rest, key=lambda i: (-c[i], objective(i, picks), -i)))
    return picks, relaxed


def brute_dpp(rel: np.ndarray, vectors: np.ndarray, k: int, theta: float, window: int | None = None,
              **rules) -> tuple[list[int], list[int]]:
    v = vectors.astype(np.float64)
    q = np.exp(theta / (2 * (1 - theta)) * rel)
    kernel = q[:, None] * (v @ v.T) * q[None, :]

    def det(i: int, picks: list[int]) -> float:
        ys = (picks if window is None else last(picks, window - 1)) + [i]
        return float(np.linalg.det(kernel[np.ix_(ys, ys)]))

    return brute_greedy(len(rel), k, det, **rules)


def brute_mmr(rel: np.ndarray, vectors: np.ndarray, k: int, eta: float, window: int | None = None,
              **rules) -> tuple[list[int], list[int]]:
    v = vectors.astype(np.float64)

    def score(i: int, picks: list[int]) -> float:
        ctx = picks if window is None else last(picks, window)
        div = -max(float(np.dot(v[i], v[j])) for j in ctx) if ctx else 0.0
        return eta * rel[i] + (1 - eta) * div

    return brute_greedy(len(rel), k, score, **rules)


def brute_diverse(rel: np.ndarray, vectors: np.ndarray, picks: list[int], n_diverse: int, eta: float) -> list[int]:
    """`picks`, then n_diverse greedy picks of eta·rel_i − (1−eta)·max over all picks of sim(i, j)."""
    v = vectors.astype(np.float64)
    picks = list(picks)

    def score(i: int) -> float:
        div = -max(float(np.dot(v[i], v[j])) for j in picks) if picks else 0.0
        return eta * rel[i] + (1 - eta) * div

    for _ in range(min(n_diverse, len(rel) - len(picks))):
        picks.append(max((i for i in range(len(rel)) if i not in picks), key=lambda i: (score(i), -i)))
    return picks


def random_case(seed: int, d: int = 8) -> tuple[np.random.Generator, int, np.ndarray, np.ndarray]:
    """(rng, k, rel, vectors): 8-12 candidates in d dimensions, 4-6 slots."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 13))
    k = int(rng.integers(4, 7))
    return rng, k, rng.random(n), unit_vectors(rng, n, d)


def random_rules(rng: np.random.Generator, n: int) -> dict:
    return {"categories": rng.integers(0, 4, n), "clusters": rng.integers(0, 5, n),
            "category_gap": int(rng.integers(0, 4)), "cluster_gap": int(rng.integers(0, 5))}


# --- DPP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 1, 2, 3, 4])
def test_dpp_picks_maximise_the_determinant(window: int | None) -> None:
    for seed in SEEDS:
        rng, k, rel, vectors = random_case(seed)
        theta = float(rng.uniform(0.0, 0.9))
        got = dpp(rel, vectors, k, theta, window=window)
        assert got.items.tolist() == brute_dpp(rel, vectors, k, theta, window)[0], seed
        assert got.relaxed.size == 0


@pytest.mark.parametrize("window", [None, 2, 3])
def test_dpp_under_spacing_rules_matches_brute_force(window: int | None) -> None:
    for seed in SEEDS:
        rng, k, rel, vectors = random_case(seed)
        rules = random_rules(rng, len(rel))
        got = dpp(rel, vectors, k, 0.6, window=window, **rules)
        picks, relaxed = brute_dpp(rel, vectors, k, 0.6, window, **rules)
        assert (got.items.tolist(), got.relaxed.tolist()) == (picks, relaxed), seed


def test_dpp_window_forgets_older_picks() -> None:
    # A then B are picked; C duplicates A, D is orthogonal to both and less relevant than C.
    vectors = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    rel = np.array([1.0, 0.9, 0.8, 0.5])
    assert dpp(rel, vectors, 3, 0.5).items.tolist() == [0, 1, 3]  # C adds no volume to {A, B}
    assert dpp(rel, vectors, 3, 0.5, window=2).items.tolist() == [0, 1, 2]  # conditioned on B only
    assert dpp(rel, vectors, 3, 0.5, window=3).items.tolist() == [0, 1, 3]


def test_dpp_ignores_a_shift_of_rel_and_survives_large_scores() -> None:
    # det(L_Y) scales by exp(2αc)^|Y| under rel + c: same picks; the brute force would overflow here.
    for seed in range(30):
        _, k, rel, vectors = random_case(seed)
        for window in (None, 3):
            base = dpp(rel, vectors, k, 0.8, window=window).items.tolist()
            assert dpp(rel + 500.0, vectors, k, 0.8, window=window).items.tolist() == base
            assert dpp(rel - 500.0, vectors, k, 0.8, window=window).items.tolist() == base


def test_dpp_fills_by_relevance_once_no_candidate_adds_volume() -> None:
    rng = np.random.default_rng(7)
    rel, vectors = rng.random(9), unit_vectors(rng, 9, 2)  # rank 2: a third pick adds no volume
    got = dpp(rel, vectors, 6, 0.5).items.tolist()
    assert got[:2] == brute_dpp(rel, vectors, 2, 0.5)[0]
    rest = sorted(set(range(9)) - set(got[:2]), key=lambda i: -rel[i])
    assert got[2:] == rest[:4]


# --- MMR -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 1, 2, 3])
def test_mmr_picks_maximise_the_objective(window: int | None) -> None:
    for seed in SEEDS:
        rng, k, rel, vectors = random_case(seed)
        eta = float(rng.uniform(0.0, 1.0))
        got = mmr(rel, vectors, k, eta, window=window)
        assert got.items.tolist() == brute_mmr(rel, vectors, k, eta, window)[0], seed


@pytest.mark.parametrize("window", [None, 2])
def test_mmr_under_spacing_rules_matches_brute_force(window: int | None) -> None:
    for seed in SEEDS:
        rng, k, rel, vectors = random_case(seed)
        rules = random_rules(rng, len(rel))
        got = mmr(rel, vectors, k, 0.7, window=window, **rules)
        picks, relaxed = brute_mmr(rel, vectors, k, 0.7, window, **rules)
        assert (got.items.tolist(), got.relaxed.tolist()) == (picks, relaxed), seed


def test_mmr_window_forgets_older_picks() -> None:
    # eta 0.5: A (rel 1), then B (0.45 vs D 0.25, C -0.1); third slot: C scores 0.4 against B alone,
    # -0.1 against A; D scores 0.25 either way.
    vectors = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    rel = np.array([1.0, 0.9, 0.8, 0.5])
    assert mmr(rel, vectors, 3, 0.5).items.tolist() == [0, 1, 3]
    assert mmr(rel, vectors, 3, 0.5, window=1).items.tolist() == [0, 1, 2]
    assert mmr(rel, vectors, 3, 0.5, window=2).items.tolist() == [0, 1, 3]


# --- spacing rules -------------------------------------------------------------------------------


def brute_violations(categories: Codes, clusters: Codes, category_gap: int, cluster_gap: int) -> int:
    n = 0
    for codes, gap in ((categories, category_gap), (clusters, cluster_gap)):
        if codes is not None:
            n += sum(codes[p] == codes[q] for p in range(len(codes)) for q in range(p + 1, min(p + gap + 1, len(codes))))
    return n


def test_spacing_violations_counts_close_pairs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(0, 30))
        cats, clus = rng.integers(0, 4, m), rng.integers(0, 6, m)
        gaps = int(rng.integers(0, 8)), int(rng.integers(0, 12))
        assert spacing_violations(cats, clus, *gaps) == brute_violations(cats, clus, *gaps)
        assert spacing_violations(cats, None, *gaps) == brute_violations(cats, None, *gaps)
    assert spacing_violations([1, 2, 1], [5, 6, 7], 2, 10) == 1
    assert spacing_violations([1, 2, 3, 1], [5, 6, 7, 8], 2, 10) == 0


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_spacing_rules_hold_when_feasible(method: str) -> None:
    # Codes i % 7 and i % 13 (10 items per pair): each slot bars at most 5 categories and 10
    # clusters, leaving >= 6 pairs, 60 items, more than the 49 earlier picks can use up.
    n, k = 910, 50
    categories, clusters = np.arange(n) % 7, np.arange(n) % 13
    for seed in range(5):
        rng = np.random.default_rng(seed)
        rel, vectors = rng.random(n), unit_vectors(rng, n, 16)
        run = mmr if method == "mmr" else dpp
        got = run(rel, vectors, k, 0.5, categories=categories, clusters=clusters)
        assert got.relaxed.size == 0 and len(set(got.items.tolist())) == k
        assert brute_violations(categories[got.items], clusters[got.items], 5, 10) == 0


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_relaxed_slots_are_exactly_the_infeasible_ones(method: str) -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n = 40
        rel, vectors = rng.random(n), unit_vectors(rng, n, 8)
        categories, clusters = rng.integers(0, 5, n), rng.integers(0, 9, n)
        run = mmr if method == "mmr" else dpp
        got = run(rel, vectors, 30, 0.5, window=4, categories=categories, clusters=clusters)
        picks = got.items.tolist()
        assert sorted(picks) == sorted(set(picks))
        infeasible, added = [], 0
        for slot, j in enumerate(picks):
            rest = [i for i in range(n) if i not in picks[:slot]]
            c = {i: conflicts(i, picks[:slot], categories, clusters, 5, 10) for i in rest}
            if min(c.values()) > 0:
                infeasible.append(slot)
            assert c[j] == min(c.values())  # relaxed: the fewest conflicts; otherwise none
            added += c[j]
        assert got.relaxed.tolist() == infeasible
        assert spacing_violations(categories[picks], clusters[picks], 5, 10) == added
        assert infeasible, "the case should need some relaxation"


# --- blocks of users (dpp_rows, mmr_rows) against the single-user loops ---------------------------


def random_block(seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(rng, bounds, k, rel, vectors, rules): 2-80 users (several chunks) of 0-60 candidates, 0-70
    slots each (k > N and empty users included), in few dimensions and with repeated rel (ties)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 61, int(rng.integers(2, 81)))
    bounds = np.r_[0, np.cumsum(sizes)]
    n = int(bounds[-1])
    rel = rng.integers(0, 12, n) / 4 if seed % 3 == 0 else rng.random(n)
    vectors = unit_vectors(rng, n, int(rng.integers(1, 9)))
    rules = random_rules(rng, n) if seed % 4 else {}
    return rng, bounds, rng.integers(0, 71, len(sizes)), rel, vectors, rules


def user_by_user(run: Callable, rel: np.ndarray, vectors: np.ndarray, bounds: np.ndarray, k: np.ndarray,
                 strength: float, window: int | None, rules: dict) -> list[tuple[list[int], list[int]]]:
    """(items, relaxed) of the single-user loop `run` on each user's rows."""
    out = []
    for (lo, hi), slots in zip(pairwise(bounds), k):
        mine = {key: v[lo:hi] if key in ("categories", "clusters") else v for key, v in rules.items()}
        got = run(rel[lo:hi], vectors[lo:hi], int(slots), strength, window=window, **mine)
        out.append((got.items.tolist(), got.relaxed.tolist()))
    return out


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("window", [None, 1, 3, 11])
def test_dpp_rows_match_dpp_user_by_user(seed: int, window: int | None) -> None:
    rng, bounds, k, rel, vectors, rules = random_block(seed)
    theta = float(rng.uniform(0.0, 0.95))
    got = dpp_rows(rel, vectors, bounds, k, theta, window=window, **rules)
    assert [(f.items.tolist(), f.relaxed.tolist()) for f in got] == user_by_user(
        dpp, rel, vectors, bounds, k, theta, window, rules)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("window", [None, 1, 2, 10])
def test_mmr_rows_match_mmr_user_by_user(seed: int, window: int | None) -> None:
    rng, bounds, k, rel, vectors, rules = random_block(seed)
    eta = float(rng.choice([0.0, 0.3, 0.7, 1.0]))
    for v in (vectors, vectors[:, :0]):  # zero width: the funnel's "none" method under spacing rules
        got = mmr_rows(rel, v, bounds, k, eta, window=window, **rules)
        assert [(f.items.tolist(), f.relaxed.tolist()) for f in got] == user_by_user(
            mmr, rel, v, bounds, k, eta, window, rules)


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_rows_break_exact_ties_by_index_in_every_user(method: str) -> None:
    # Equal rel, orthogonal vectors: every candidate scores the same at every slot, in every user of
    # several chunks; with categories 0 0 1 1 2 2 and a gap of 1 the rule moves 2 before 1, and the
    # last slot (only 5 left, same category as 4) is relaxed.
    users = ROWS_CHUNK + 5
    bounds = np.arange(users + 1) * 6
    rel, vectors = np.ones(6 * users), np.tile(np.eye(6, dtype=np.float32), (users, 1))
    run = mmr_rows if method == "mmr" else dpp_rows
    assert all(f.items.tolist() == [0, 1, 2, 3, 4] for f in run(rel, vectors, bounds, np.full(users, 5), 0.5))
    categories = np.tile([0, 0, 1, 1, 2, 2], users)
    got = run(rel, vectors, bounds, np.full(users, 6), 0.5, categories=categories, category_gap=1)
    assert all(f.items.tolist() == [0, 2, 1, 3, 4, 5] and f.relaxed.tolist() == [5] for f in got)


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_rows_edge_cases(method: str) -> None:
    run = mmr_rows if method == "mmr" else dpp_rows
    rng = np.random.default_rng(4)
    rel, vectors = rng.random(10), unit_vectors(rng, 10, 4)
    assert run(np.empty(0), np.empty((0, 4), np.float32), np.zeros(1, np.int64), np.zeros(0, np.int64), 0.5) == []
    got = run(rel, vectors, np.array([0, 0, 4, 4, 10]), np.array([3, 0, 50, 8]), 0.5)  # sizes 0, 4, 0, 6
    assert [len(f.items) for f in got] == [0, 0, 0, 6]
    assert sorted(got[3].items.tolist()) == list(range(6))  # k > N: every candidate
    with pytest.raises(ValueError):
        run(rel, vectors, np.array([0, 4, 9]), np.array([1, 1]), 0.5)  # bounds must end at N
    with pytest.raises(ValueError):
        run(rel, vectors, np.array([0, 4, 10]), np.array([1]), 0.5)  # one k per user
    with pytest.raises(ValueError):
        run(rel, vectors, np.array([0, 4, 10]), np.array([1, 1]), 0.5, window=0)


# --- interest then diverse -----------------------------------------------------------------------


def test_interest_then_diverse_follows_the_formula() -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(20, 60))
        rel, vectors = rng.random(n), unit_vectors(rng, n, 8)
        rel[rng.integers(0, n, 5)] = 0.5  # some ties
        n_interest, n_diverse, eta = int(rng.integers(0, 12)), int(rng.integers(0, 20)), float(rng.random())
        got = interest_then_diverse(rel, vectors, n_interest, n_diverse, eta).tolist()
        top = sorted(range(n), key=lambda i: (-rel[i], i))[:n_interest]
        assert got[:n_interest] == top
        assert got == brute_diverse(rel, vectors, top, n_diverse, eta), seed


def plain_diverse(rel: np.ndarray, vectors: np.ndarray, n_interest: int, n_diverse: int, eta: float) -> list[int]:
    """The cut without shortcuts: every pick rescans every candidate (a running max of similarities)."""
    v = vectors.astype(np.float64)
    picks = np.argsort(-rel, kind="stable")[:n_interest].tolist()
    max_sim = (v @ v[picks].T).max(axis=1) if picks else None
    for _ in range(min(n_diverse, len(rel) - len(picks))):
        score = eta * rel - (1 - eta) * max_sim if picks else eta * rel
        score[picks] = -np.inf
        picks.append(int(np.argmax(score)))
        max_sim = v @ v[picks[-1]] if max_sim is None else np.maximum(max_sim, v @ v[picks[-1]])
    return picks


@pytest.mark.parametrize("seed", range(60))
def test_interest_then_diverse_lazy_rounds_match_the_plain_greedy(seed: int) -> None:
    # Integer vectors and rel in quarters: every score is exact, so the many exact ties (duplicate
    # vectors, equal rel) must go to the lower index exactly as in the plain greedy. Sizes span
    # several rounds, runs and queue refills.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 900))
    vectors = rng.integers(-1, 2, (n, int(rng.integers(1, 7)))).astype(np.float32)
    rel = rng.integers(0, int(rng.choice([2, 8, 400])), n) / 4
    n_interest, n_diverse = int(rng.integers(0, 80)), int(rng.integers(0, 500))
    eta = float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]))
    got = interest_then_diverse(rel, vectors, n_interest, n_diverse, eta).tolist()
    assert got == plain_diverse(rel, vectors, n_interest, n_diverse, eta)


def test_interest_then_diverse_rows_cut_each_user_alone() -> None:
    rng = np.random.default_rng(2)
    catalogue = unit_vectors(rng, 300, 8)
    sizes = [0, 3, 250, 40, 0, 180]
    bounds = np.r_[0, np.cumsum(sizes)]
    items = rng.integers(0, 300, bounds[-1])
    rel = rng.random(bounds[-1])
    got = interest_then_diverse_rows(rel, items, bounds, catalogue, 20, 30, 0.6)
    want = np.concatenate([lo + np.sort(plain_diverse(rel[lo:hi], catalogue[items[lo:hi]], 20, 30, 0.6))
                           for lo, hi in pairwise(bounds)]).astype(np.int64)
    assert got.tolist() == want.tolist()
    with pytest.raises(ValueError):
        interest_then_diverse_rows(rel, items, bounds, catalogue, 20, 30, 1.5)


def test_interest_then_diverse_takes_at_most_every_candidate() -> None:
    rng = np.random.default_rng(1)
    rel, vectors = rng.random(10), unit_vectors(rng, 10, 4)
    assert sorted(interest_then_diverse(rel, vectors, 4, 100, 0.5).tolist()) == list(range(10))
    assert interest_then_diverse(rel, vectors, 50, 5, 0.5).tolist() == np.argsort(-rel).tolist()
    assert interest_then_diverse(np.empty(0), np.empty((0, 4)), 3, 3, 0.5).size == 0


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_edge_cases(method: str) -> None:
    run = mmr if method == "mmr" else dpp
    empty = run(np.empty(0), np.empty((0, 4), np.float32), 5, 0.5)
    assert empty.items.size == 0 and empty.relaxed.size == 0
    rng = np.random.default_rng(3)
    rel, vectors = rng.random(6), unit_vectors(rng, 6, 8)
    assert sorted(run(rel, vectors, 50, 0.5).items.tolist()) == list(range(6))  # k > N
    assert run(rel, vectors, 0, 0.5).items.size == 0
    # ties: equal rel, orthogonal vectors -> every candidate scores the same at every slot
    assert run(np.ones(5), np.eye(5, dtype=np.float32), 5, 0.5).items.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        run(rel, vectors, 3, 0.5, window=0)
    with pytest.raises(ValueError):
        run(rel, vectors[:5], 3, 0.5)
    with pytest.raises(ValueError):
        run(rel, vectors, 3, 1.5)


def test_relevance_only_settings_rank_by_rel() -> None:
    rng = np.random.default_rng(5)
    rel, vectors = rng.random(30), unit_vectors(rng, 30, 8)
    order = np.argsort(-rel, kind="stable")[:10].tolist()
    assert mmr(rel, vectors, 10, 1.0).items.tolist() == order
    assert dpp(rel, vectors, 10, 0.5, window=1).items.tolist() == order  # window 1: conditioned on nothing


def test_minmax_rows_scale_each_user_alone() -> None:
    """Against pandas: (x - min) / (max - min) within each user; 0 for a user whose scores are all
    equal; empty users skipped; bounds that do not cover the values are refused."""
    rng = np.random.default_rng(3)
    sizes = np.array([5, 0, 1, 7, 0, 4])
    values = rng.normal(10.0, 3.0, sizes.sum())
    values[sizes[:3].sum():sizes[:4].sum()][:3] = 2.5  # ties inside a user
    values[-4:] = 1.25  # a user whose scores are all equal
    bounds = np.r_[0, np.cumsum(sizes)]
    frame = pd.DataFrame({"user": np.repeat(np.arange(len(sizes)), sizes), "x": values})
    low, high = (frame.groupby("user")["x"].transform(f) for f in ("min", "max"))
    expected = ((frame["x"] - low) / (high - low)).fillna(0.0).to_numpy()
    np.testing.assert_allclose(minmax_rows(values, bounds), expected, rtol=0, atol=1e-15)
    assert minmax_rows(np.zeros(0), np.zeros(1, np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="bounds run from 0 to 17, not from 0 to 18"):
        minmax_rows(np.r_[values, 0.0], bounds)


@pytest.mark.parametrize("method", ["dpp", "mmr"])
def test_scaled_relevance_makes_the_feed_independent_of_the_scores_scale(method: str) -> None:
    """The funnel's diversity.relevance: minmax: the feeds of scores a*x + b (a > 0, per user) are
    those of x, while on raw scores the same eta trades more relevance away as the scores shrink."""
    rng = np.random.default_rng(11)
    sizes = np.array([40, 25, 60])
    bounds = np.r_[0, np.cumsum(sizes)]
    rel, vectors = rng.random(sizes.sum()), unit_vectors(rng, sizes.sum(), 8)
    a, b = np.repeat([0.01, 0.2, 5.0], sizes), np.repeat([3.0, -1.0, 0.5], sizes)
    rows = dpp_rows if method == "dpp" else mmr_rows
    k = np.full(len(sizes), 10)

    def feeds(x: np.ndarray) -> list[list[int]]:
        return [list(sel.items) for sel in rows(x, vectors, bounds, k, 0.7, window=5)]

    assert feeds(minmax_rows(a * rel + b, bounds)) == feeds(minmax_rows(rel, bounds))
    assert feeds(a * rel + b) != feeds(rel)
