"""The fusion formula of full ranking (docs/METHODS.md "Fusion and bonuses"): one score per candidate
from the heads' predictions, score = Σ_k w_k·p_k + Σ_b w_b(x_b)·p_head(b), where each bonus b is
a named monotone function of a count x_b:

- follow:    x = the user's followed authors,     term on p_follow  (decreasing: few follows, more weight)
- fan:       x = the item's author's fans,        term on p_follow  (decreasing: helps new authors)
- comment:   x = the item's comments so far,      term on p_comment (decreasing: first comments sooner)
- kol_share: x = the user's KOL score,            term on p_share   (increasing: KOLs' shares bring visits)

Functions: inverse w(x) = a / (1 + x / x0) (decreasing in x), linear w(x) = a·x (increasing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

BONUS_HEADS = {"follow": "follow", "fan": "follow", "comment": "comment", "kol_share": "share"}
BonusFunction = Literal["inverse", "linear"]


def bonus_weight(function: BonusFunction, a: float, x0: float, x: np.ndarray) -> np.ndarray:
    """w(x) of one bonus: inverse a / (1 + x / x0), linear a·x (x >= 0)."""
    x = np.asarray(x, dtype=np.float64)
    if function == "inverse":
        return a / (1.0 + x / x0)
    if function == "linear":
        return a * x
    raise ValueError(f"unknown bonus function {function!r}; known: inverse, linear")


def fusion_terms(predictions: np.ndarray, heads: Sequence[str], weights: Mapping[str, float],
                 bonuses: Mapping[str, tuple[BonusFunction, float, float]],
                 counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every term of the score of each candidate: `w_<head>` = w_head·p_head for each weighted head
    and `bonus_<name>` = w(x)·p_head(name) for each bonus (its counts in `counts[name]`, one per
    candidate). predictions: (n, len(heads)) probabilities; the score is the sum of the terms."""
    terms = {f"w_{head}": weights[head] * predictions[:, heads.index(head)].astype(np.float64)
             for head in heads if weights.get(head)}
    for name, (function, a, x0) in bonuses.items():
        p = predictions[:, heads.index(BONUS_HEADS[name])].astype(np.float64)
        terms[f"bonus_{name}"] = bonus_weight(function, a, x0, counts[name]) * p
    return terms


def fusion_score(terms: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """The sum of the terms (zeros for no term)."""
    return np.sum(list(terms.values()), axis=0) if terms else np.zeros(n)
