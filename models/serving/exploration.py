"""Exploration (docs/METHODS.md "Exploration"): a share of each feed's slots holds non-personalised
items from a curated pool, inserted at random positions after ranking; the ranked items keep their
order around them.

Per feed of n slots, the number of exploration slots is floor(n·s) plus one more with probability
n·s − floor(n·s), so its expectation is exactly n·s (s = the share)."""

from __future__ import annotations

import numpy as np


def exploration_slots(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """The sorted positions (0-based) of the exploration items in a feed of n slots."""
    expected = n * share
    count = min(n, int(np.floor(expected)) + int(rng.random() < expected - np.floor(expected)))
    return np.sort(rng.choice(n, size=count, replace=False)) if count else np.zeros(0, np.int64)


def interleave(ranked: np.ndarray, explore: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(feed, is_exploration): `explore` items at `slots` (as many as there are items), the ranked
    items in their order everywhere else, up to len(ranked) + len(explore) slots."""
    slots = slots[: len(explore)]
    n = len(ranked) + len(slots)
    is_explore = np.zeros(n, bool)
    is_explore[slots[slots < n]] = True
    feed = np.empty(n, dtype=np.asarray(ranked).dtype if len(ranked) else np.int64)
    feed[is_explore] = explore[: int(is_explore.sum())]
    feed[~is_explore] = ranked[: int((~is_explore).sum())]
    return feed, is_explore
