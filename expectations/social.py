"""The GX suites of the social tables (docs/METHODS.md "Implicit follows", "KOL scoring", "Data-quality gates"), one day at a time.

kol_scores: the day's scores before they are written. implicit_follows: the day's rows as dbt
built them, with `explicitly_followed` (the pair's follow state at the end of the day, computed
apart from the dbt model by tasks/social/implicit_follows.py) and `is_self` (user_id = author_id).
"""

from __future__ import annotations

from typing import Any

import great_expectations.expectations as gxe

from tasks.core.config import ImplicitFollowsConfig

KOL_SCORE_COLUMNS = ("day", "user_id", "shares", "visits", "kol_score", "percentile", "is_kol")


def kol_score_expectations() -> list[Any]:
    """One row per user, no nulls (visits_per_share is null without shares), counts and scores
    >= 0, percentiles in (0, 1]. A day nobody shared on is empty, and valid."""
    return [
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in KOL_SCORE_COLUMNS),
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
        gxe.ExpectColumnValuesToBeBetween(column="shares", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="visits", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="kol_score", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="percentile", min_value=0, max_value=1, strict_min=True),
    ]


def implicit_follow_expectations(settings: ImplicitFollowsConfig) -> list[Any]:
    """One row per (user, author), no explicit follow and no self-pair, ranks 1..top_n, clicks
    >= min_clicks, affinity >= 0. A day without engagement is empty, and valid."""
    return [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "author_id"]),
        gxe.ExpectColumnValuesToBeInSet(column="explicitly_followed", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="is_self", value_set=[False]),
        gxe.ExpectColumnValuesToNotBeNull(column="rank"),
        gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=settings.top_n),
        gxe.ExpectColumnValuesToBeBetween(column="clicks", min_value=settings.min_clicks),
        gxe.ExpectColumnValuesToNotBeNull(column="affinity"),
        gxe.ExpectColumnValuesToBeBetween(column="affinity", min_value=0),
    ]
