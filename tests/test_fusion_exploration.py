"""The fusion formula's bonus terms and the exploration slots, against their formulas: each bonus
moves the items it should and only those; exploration takes its share of slots on average and the
ranked items keep their order around it."""

from __future__ import annotations

import numpy as np
import pytest

from models.serving.exploration import exploration_slots, interleave
from models.serving.fusion import bonus_weight, fusion_score, fusion_terms
from tasks.core.config import RANKING_HEADS

WEIGHTS = {"click": 1.0, "like": 2.0, "follow": 4.0, "comment": 3.0, "share": 3.0}


def _preds(**by_head: list[float]) -> np.ndarray:
    n = len(next(iter(by_head.values())))
    out = np.zeros((n, len(RANKING_HEADS)))
    for head, values in by_head.items():
        out[:, RANKING_HEADS.index(head)] = values
    return out


def _order(preds: np.ndarray, bonuses: dict, counts: dict) -> list[int]:
    terms = fusion_terms(preds, RANKING_HEADS, WEIGHTS, bonuses, counts)
    return list(np.argsort(-fusion_score(terms, len(preds)), kind="stable"))


def test_bonus_functions_are_monotone_and_match_their_formula() -> None:
    x = np.array([0.0, 1.0, 5.0, 50.0])
    assert np.allclose(bonus_weight("inverse", 4.0, 5.0, x), 4.0 / (1 + x / 5.0))
    assert np.all(np.diff(bonus_weight("inverse", 4.0, 5.0, x)) < 0)
    assert np.allclose(bonus_weight("linear", 3.0, 1.0, x), 3.0 * x)
    with pytest.raises(ValueError):
        bonus_weight("log", 1.0, 1.0, x)


def test_the_score_is_the_weighted_sum_plus_the_bonus_terms() -> None:
    rng = np.random.default_rng(0)
    preds = rng.random((20, len(RANKING_HEADS)))
    counts = {"follow": rng.integers(0, 30, 20).astype(float), "comment": rng.integers(0, 30, 20).astype(float)}
    bonuses = {"follow": ("inverse", 4.0, 5.0), "comment": ("inverse", 2.0, 5.0)}
    score = fusion_score(fusion_terms(preds, RANKING_HEADS, WEIGHTS, bonuses, counts), 20)
    col = {h: preds[:, RANKING_HEADS.index(h)] for h in RANKING_HEADS}
    expected = (sum(w * col[h] for h, w in WEIGHTS.items())
                + 4.0 / (1 + counts["follow"] / 5.0) * col["follow"] + 2.0 / (1 + counts["comment"] / 5.0) * col["comment"])
    assert np.allclose(score, expected)


def test_a_user_with_few_follows_sees_the_follow_likely_item_rise() -> None:
    # item 0: likelier click; item 1: likelier follow. Without the bonus, item 0 leads.
    preds = _preds(click=[0.50, 0.40], follow=[0.01, 0.03])
    bonus = {"follow": ("inverse", 4.0, 5.0)}
    assert _order(preds, {}, {}) == [0, 1]
    assert _order(preds, bonus, {"follow": np.array([0.0, 0.0])}) == [1, 0]  # a user following no one
    assert _order(preds, bonus, {"follow": np.array([200.0, 200.0])}) == [0, 1]  # a user following many


def test_a_low_fan_authors_item_rises_and_only_it() -> None:
    preds = _preds(click=[0.50, 0.45, 0.40], follow=[0.03, 0.03, 0.03])
    bonus = {"fan": ("inverse", 3.0, 10.0)}
    fans = np.array([1000.0, 0.0, 1000.0])  # item 1's author is new
    base = _order(preds, {}, {})
    boosted = _order(preds, bonus, {"fan": fans})
    assert base == [0, 1, 2] and boosted == [1, 0, 2]  # item 1 rises; 0 and 2 keep their relative order


def test_an_item_with_few_comments_rises() -> None:
    preds = _preds(click=[0.50, 0.46], comment=[0.02, 0.02])
    bonus = {"comment": ("inverse", 4.0, 2.0)}
    assert _order(preds, bonus, {"comment": np.array([500.0, 0.0])}) == [1, 0]
    assert _order(preds, bonus, {"comment": np.array([500.0, 500.0])}) == [0, 1]


def test_a_kols_share_term_grows_with_the_kol_score() -> None:
    preds = _preds(click=[0.50, 0.40], share=[0.0, 0.02])
    bonus = {"kol_share": ("linear", 3.0, 1.0)}
    assert _order(preds, bonus, {"kol_share": np.array([0.1, 0.1])}) == [0, 1]
    assert _order(preds, bonus, {"kol_share": np.array([5.0, 5.0])}) == [1, 0]


@pytest.mark.parametrize("share", [0.02, 0.03, 0.1])
def test_exploration_takes_its_share_of_slots(share: float) -> None:
    rng = np.random.default_rng(1)
    n, feeds = 50, 4000
    taken = sum(len(exploration_slots(n, share, rng)) for _ in range(feeds))
    assert abs(taken / (n * feeds) - share) <= 0.005


def test_ranked_items_keep_their_order_around_the_exploration_items() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        ranked = rng.permutation(100)[:48] + 1000
        explore = rng.permutation(20)[:2]
        slots = exploration_slots(50, 0.04, rng)
        feed, is_explore = interleave(ranked, explore[: len(slots)], slots)
        assert list(feed[~is_explore]) == list(ranked[: (~is_explore).sum()])
        assert list(np.flatnonzero(is_explore)) == list(slots) and set(feed[is_explore]) <= set(explore)
