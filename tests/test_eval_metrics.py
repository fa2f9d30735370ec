"""Retrieval metrics on hand-made lists, each value worked out by hand in the comment beside it; the
per-user terms they average; the bootstrap CI over users against an independent numpy bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.eval_metrics import (
    auc,
    bootstrap_ci,
    coverage_at_k,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    tail_items,
    tail_recall_at_k,
    user_hit,
    user_ndcg,
    user_recall,
    user_tail_recall,
    user_terms,
)

RETRIEVED = np.array([[3, 1, 4, -1], [2, 0, 5, 6]])
TRUTH = [np.array([1, 9]), np.array([6])]


def test_recall_hit_rate_ndcg() -> None:
    # user 0: 1 of {1, 9} in the top 2; user 1: 6 not in the top 2, found at position 4.
    assert recall_at_k(RETRIEVED, TRUTH, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert recall_at_k(RETRIEVED, TRUTH, 4) == pytest.approx((0.5 + 1.0) / 2)
    assert hit_rate_at_k(RETRIEVED, TRUTH, 2) == pytest.approx(0.5)
    # user 0: DCG = 1/log2(3), ideal = 1 + 1/log2(3); user 1: DCG = 1/log2(5), ideal = 1.
    expected = ((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 1 / np.log2(5)) / 2
    assert ndcg_at_k(RETRIEVED, TRUTH, 4) == pytest.approx(expected)


def test_tail_recall_and_coverage() -> None:
    tail = np.zeros(10, bool)
    tail[[6, 9]] = True
    # user 0's tail truth {9}: missed; user 1's {6}: found in the top 4.
    assert tail_recall_at_k(RETRIEVED, TRUTH, 4, tail) == pytest.approx(0.5)
    assert coverage_at_k(RETRIEVED, 2, 10) == pytest.approx(4 / 10)


def test_tail_is_the_least_clicked_share() -> None:
    clicks = np.array([0, 0, 0, 1, 1, 2])  # item 0: 3 clicks, 1: 2, 2: 1, 3-4: none
    mask = tail_items(clicks, 5, 0.6)
    assert mask.tolist() == [False, False, True, True, True]


def test_auc_counts_ordered_pairs_and_half_ties() -> None:
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.3, 0.1])
    # pairs (positive, negative): (0.9 > 0.8, 0.3, 0.1) = 3; (0.3 vs 0.8: 0, vs 0.3: 1/2, vs 0.1: 1)
    assert auc(labels, scores) == pytest.approx(4.5 / 6)
    assert auc(labels, -scores) == pytest.approx(1 - 4.5 / 6)
    assert np.isnan(auc(np.ones(3), np.arange(3)))


def test_per_user_terms_average_to_the_metrics() -> None:
    tail = np.zeros(10, bool)
    tail[[6, 9]] = True
    assert user_recall(RETRIEVED, TRUTH, 4).tolist() == [0.5, 1.0]
    assert user_hit(RETRIEVED, TRUTH, 2).tolist() == [1.0, 0.0]
    assert user_ndcg(RETRIEVED, TRUTH, 4).mean() == pytest.approx(ndcg_at_k(RETRIEVED, TRUTH, 4))
    per_user = user_tail_recall(RETRIEVED, TRUTH, 4, tail)
    assert per_user.tolist() == [0.0, 1.0]
    tail[9] = False  # user 0 has no tail truth left: not counted
    assert np.isnan(user_tail_recall(RETRIEVED, TRUTH, 4, tail)[0])
    assert tail_recall_at_k(RETRIEVED, TRUTH, 4, tail) == pytest.approx(1.0)


def test_bootstrap_ci_matches_an_independent_numpy_bootstrap() -> None:
    """Percentile bootstrap over users: 500 resamples of 40 users' recalls (seed 11), 95%."""
    values = np.random.default_rng(0).binomial(4, 0.3, 40) / 4
    low, high = bootstrap_ci(values, resamples=500, alpha=0.05, seed=11)
    rng = np.random.default_rng(11)
    means = np.array([values[rng.integers(0, 40, 40)].mean() for _ in range(500)])
    assert (float(low), float(high)) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert low < values.mean() < high
    # several columns: drawn together, one interval each; the same draws as one column alone
    both_low, both_high = bootstrap_ci(np.column_stack([values, 1 - values]), 500, 0.05, seed=11)
    assert both_low[0] == pytest.approx(float(low), abs=1e-12) and both_high[1] == pytest.approx(1 - float(low), abs=1e-12)
    # a statistic of the resampled means (the model gate's paired relative drop)
    drop_low, drop_high = bootstrap_ci(np.column_stack([0.5 * values, values]), 500, 0.05, seed=11,
                                       statistic=lambda m: 1 - m[:, 0] / m[:, 1])
    assert (float(drop_low), float(drop_high)) == pytest.approx((0.5, 0.5), abs=1e-12)
    with pytest.raises(ValueError):
        bootstrap_ci(np.zeros(0), 100, 0.05, seed=1)


def test_all_users_at_once_match_a_set_per_user() -> None:
    """user_terms and the per-metric functions (one key lookup for all users) against plain Python
    sets, user by user: -1 padding, repeated items in a list and in the truth, K past the list."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        n, items, width = rng.integers(1, 40), rng.integers(1, 60), rng.integers(1, 30)
        retrieved = rng.integers(-1, items, (n, width))
        truth = [rng.integers(0, items, rng.integers(1, 6)) for _ in range(n)]
        ks = (3, 40)
        terms = user_terms(retrieved, truth, ks)
        for u in range(n):
            clicked = set(truth[u].tolist())
            for j, k in enumerate(ks):
                top = retrieved[u, :k].tolist()
                hits = [i >= 0 and i in clicked for i in top]
                ideal = sum(1 / np.log2(r + 2) for r in range(min(len(clicked), len(top))))
                expected = (sum(hits) / len(clicked), sum(h / np.log2(r + 2) for r, h in enumerate(hits)) / ideal,
                            float(any(hits)))
                assert terms[u, 3 * j: 3 * j + 3] == pytest.approx(expected, rel=1e-12)
        for j, k in enumerate(ks):
            assert np.array_equal(terms[:, 3 * j], user_recall(retrieved, truth, k))
            assert np.array_equal(terms[:, 3 * j + 1], user_ndcg(retrieved, truth, k))
            assert np.array_equal(terms[:, 3 * j + 2], user_hit(retrieved, truth, k))
