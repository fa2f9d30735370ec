"""The GX suite a content pool's new version must pass before it is published (docs/METHODS.md "Pool refresh and publish").

The frame checked is the version's members, one row per (segment, item), with the item's own
publish_ts and expire_ts read from the items (not from the pool model's flags), and the size of
its segment's list.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import great_expectations.expectations as gxe

from tasks.core.config import ALL, PoolConfig



def pool_expectations(pool: PoolConfig, as_of: dt.datetime) -> list[Any]:
    """Sizes within the configured bounds per segment, every target segment present (when the
    pool must not be empty), no duplicate or expired item, items inside the window, scores in
    [0, 1], ranks from 1 to max_size."""
    segments = list(pool.segments) or [ALL]
    window_start = as_of - dt.timedelta(hours=pool.window_hours)
    suite: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=pool.min_size * len(segments), max_value=pool.max_size * len(segments)
        ),
        gxe.ExpectColumnValuesToBeInSet(column="segment", value_set=segments),
        gxe.ExpectColumnValuesToBeBetween(column="segment_size", min_value=pool.min_size, max_value=pool.max_size),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["segment", "item_id"]),
        gxe.ExpectColumnValuesToNotBeNull(column="score"),
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=pool.max_size),
        gxe.ExpectColumnValuesToBeBetween(
            column="publish_ts", min_value=window_start, max_value=as_of, strict_max=True
        ),
    ]
    if pool.filters.exclude_expired:
        # Nulls (items that never expire) are not checked by column map expectations.
        suite.append(gxe.ExpectColumnValuesToBeBetween(column="expire_ts", min_value=as_of, strict_min=True))
    if pool.min_size > 0:
        suite.append(gxe.ExpectColumnDistinctValuesToContainSet(column="segment", value_set=segments))
    return suite
