"""The GX suite of the nightly feeds (docs/METHODS.md "Batch feeds"), before their pointer moves.

The frame has one row per (strategy, user) feed: its length, duplicate items, items the user was
shown lately (or had a positive on), expired items, pairs breaking the spacing rules outside the
slots where the rules had to be relaxed, and exploration items; plus one row per configured
strategy (a strategy with no feed has length 0).
"""

from __future__ import annotations

from typing import Any

import great_expectations.expectations as gxe


def feed_expectations(feed_length: int, strategies: list[str], exploration_share: dict[str, float],
                      tolerance: float) -> list[Any]:
    """Every feed full, no duplicate, seen or expired item, spacing rules kept, every strategy
    present, and each strategy's exploration share within `tolerance` of its setting."""
    out = [
        gxe.ExpectColumnValuesToBeBetween(column="length", min_value=feed_length, max_value=feed_length),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=0)
          for c in ("duplicates", "seen", "expired", "spacing_violations")),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="strategy", value_set=strategies),
    ]
    for strategy, share in exploration_share.items():
        out.append(gxe.ExpectColumnValuesToBeBetween(
            column=f"exploration_share_{strategy}", min_value=max(0.0, share - tolerance), max_value=share + tolerance))
    return out
