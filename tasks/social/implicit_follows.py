"""Implicit follows (docs/METHODS.md "Implicit follows" U2A2I): authors a user engages with a lot without following them.

dbt builds `implicit_follows` per day (dbt/models/social/implicit_follows.sql). Each built day is
then checked by a GX suite (expectations/social.py) against the follow graph recomputed here from
the lake's follow actions (raw.follows, not the dbt model's own logic); a failing day raises a
data-quality alert and ImplicitFollowsRejected, so the day is not announced downstream.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.days import day_range
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import connect
from tasks.ops.alerts import DataQualityRejected

log = logging.getLogger(__name__)
TABLE = "implicit_follows"


class ImplicitFollowsRejected(DataQualityRejected):
    """A day of implicit_follows failed its GX suite."""


def build(cfg: PlatformConfig, ds_from: str, ds: str) -> None:
    """dbt: rebuild implicit_follows for the days [ds_from, ds] (with its dbt tests; the
    implicit_follows DAG runs the same selection as its `dbt` task group)."""
    run_dbt(cfg, ["build", "--selector", "implicit_follows"], ds=ds, ds_from=ds_from)


def explicit_follows(follows: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """The (user_id, author_id) edges followed at the end of `day`, from follow actions (user_id,
    author_id, ts, action, dt): the pair's latest action up to that day decides; an unfollow wins
    a tie at the same instant."""
    upto = follows[pd.to_datetime(follows.dt).dt.date <= day]
    latest = upto.sort_values(["ts", "action"]).groupby(["user_id", "author_id"]).action.last()
    return latest[latest == "follow"].reset_index()[["user_id", "author_id"]]


def check_day(cfg: PlatformConfig, pairs: pd.DataFrame, follows: pd.DataFrame, day: dt.date) -> dict[str, Any]:
    """Validate one day's implicit follows with GX; alert and raise ImplicitFollowsRejected on
    failure; return a summary (pairs, users, explicit edges at the end of the day)."""
    from expectations.runner import require_valid, validate_frame  # lazy: GX: 7 s, kept out of DAG parsing
    from expectations.social import implicit_follow_expectations  # lazy: as above

    if pairs.empty:
        log.warning("implicit_follows has no pair for %s (no engagement in the window)", day)
    edges = explicit_follows(follows, day)
    followed = set(zip(edges.user_id, edges.author_id))
    frame = pairs.assign(
        explicitly_followed=[(u, a) in followed for u, a in zip(pairs.user_id, pairs.author_id)],
        is_self=pairs.user_id == pairs.author_id,
    )
    outcome = validate_frame(frame, "implicit_follows", implicit_follow_expectations(cfg.implicit_follows))
    require_valid(
        cfg, outcome, ImplicitFollowsRejected, source="implicit_follows.validate",
        title=f"Implicit follows of {day} rejected: not announced downstream",
        details={"day": day.isoformat(), "rows": len(frame)},
    )
    return {"day": day.isoformat(), "pairs": len(pairs), "users": int(pairs.user_id.nunique()), "explicit_edges": len(edges)}


def validate_days(cfg: PlatformConfig, ds_from: str, ds: str) -> list[dict[str, Any]]:
    """GX-check every built day of [ds_from, ds], oldest first (read-only)."""
    days = day_range(dt.date.fromisoformat(ds_from), dt.date.fromisoformat(ds))
    with connect(cfg, read_only=True) as con:
        pairs = con.execute(
            f"select * from {TABLE} where day between ? and ? order by day, user_id, rank", [days[0], days[-1]]
        ).df()
        follows = con.execute(
            "select user_id, author_id, ts, action, dt from raw.follows where dt <= ?", [days[-1]]
        ).df()
    summaries = [
        check_day(cfg, pairs[pairs.day.dt.date == d].reset_index(drop=True), follows, d) for d in days
    ]
    log.info("implicit_follows checked: %s", summaries)
    return summaries
