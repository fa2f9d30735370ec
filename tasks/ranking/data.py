"""The ranking examples (docs/METHODS.md "Ranking examples"), read from the warehouse as numpy: one row per (day, user,
item) shown, with its labels, one column per ranking head (tasks.core.config.RANKING_HEADS), as the dbt
model `ranking_exposures` builds them per day (`build_exposures`), plus each example's user
segments (dbt's int_user_day_segments, when built).

Model features beyond the ids (user features, item catalogue, behaviour sequences) come from
tasks/retrieval/data.py and tasks/train_two_tower.load_users, as for retrieval.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd

from models.common.tables import Exposures
from tasks.core.config import RANKING_HEADS, PlatformConfig
from tasks.core.dbt_runner import run_dbt

TABLE = "ranking_exposures"


def build_exposures(cfg: PlatformConfig, ds_from: dt.date, ds: dt.date) -> None:
    """dbt: (re)build ranking_exposures for the days [ds_from, ds], with its tests (nightly_training
    runs the same selection as its `ranking.dbt` task group)."""
    run_dbt(cfg, ["build", "--selector", "ranking"], ds=ds.isoformat(), ds_from=ds_from.isoformat())


def load_exposures(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date) -> Exposures:
    """The examples of the days first..last (both included)."""
    df = con.execute(
        f"""
        select day, user_id, item_id, shown_at, coalesce(position, -1) as position,
            {", ".join(f'"{h}"' for h in RANKING_HEADS)}
        from {TABLE} where day between ? and ?
        order by day, shown_at, user_id, item_id
        """,
        [first, last],
    ).df()
    return Exposures(
        day=df.day.to_numpy().astype("datetime64[D]"),
        user_id=df.user_id.to_numpy(np.int64),
        item_id=df.item_id.to_numpy(np.int64),
        shown_us=df.shown_at.to_numpy().astype("datetime64[us]").astype(np.int64),
        position=df.position.to_numpy(np.int64),
        labels=df[list(RANKING_HEADS)].to_numpy(np.float32),
    )


def user_segments(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date) -> pd.DataFrame:
    """(day, user_id, segment) memberships of the days first..last; empty before dbt built them."""
    present = con.execute(
        "select count(*) from information_schema.tables where table_name = 'int_user_day_segments'"
    ).fetchone()[0]
    if not present:
        return pd.DataFrame({"day": pd.Series(dtype="datetime64[us]"), "user_id": pd.Series(dtype="int64"),
                             "segment": pd.Series(dtype="str")})
    return con.execute(
        "select day, user_id, segment from int_user_day_segments where day between ? and ? order by all", [first, last]
    ).df()
