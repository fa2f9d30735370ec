"""Retrieval metrics on hand-made lists, each value worked out by hand in the comment beside it."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.eval_metrics import (
    auc,
    coverage_at_k,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    tail_items,
    tail_recall_at_k,
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
