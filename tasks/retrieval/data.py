"""What retrieval models train and are evaluated on, read from the warehouse (read-only) as numpy:
the item catalogue, the positive (user, item) events of a window, the impressions without a
click (hard negatives), follows (explicit, as of a day) and implicit follows.

Ids stay external (int64, as in the contract); each model maps them to rows itself (and keeps the
mapping with its weights), so a version trained yesterday still knows which row is which item.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import duckdb
import numpy as np
import pandas as pd

from models.common.tables import Catalogue, Events
from tasks.core.config import PlatformConfig
from tasks.core.warehouse import table_names

log = logging.getLogger(__name__)


def _ts_us(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[us]").astype(np.int64)


def connect_read(cfg: PlatformConfig) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse."""
    return duckdb.connect(str(cfg.warehouse_path), read_only=True)


def load_catalogue(con: duckdb.DuckDBPyConnection, through: dt.date) -> Catalogue:
    """Items published up to the end of `through`."""
    df = con.execute(
        """
        select item_id, author_id, category_l1, category_l2, content_cluster, publish_ts
        from raw.items where publish_ts < ? order by item_id
        """,
        [through + dt.timedelta(days=1)],
    ).df()
    l1 = df.category_l1.astype("category")
    l2 = df.category_l2.astype("category")
    return Catalogue(
        item_id=df.item_id.to_numpy(np.int64),
        author_id=df.author_id.to_numpy(np.int64),
        category_l1=l1.cat.codes.to_numpy(np.int32),
        category_l2=l2.cat.codes.to_numpy(np.int32),
        content_cluster=df.content_cluster.to_numpy(np.int32),
        publish_us=_ts_us(df.publish_ts.to_numpy()),
        l1_names=tuple(map(str, l1.cat.categories)),
        l2_names=tuple(map(str, l2.cat.categories)),
    )


def load_events(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date
) -> Events:
    """Events of `event_type` on days first..last (both included) on catalogue items, time-ordered."""
    df = con.execute(
        """
        select user_id, item_id, ts, cast(dt as date) as day
        from raw.events
        where event_type = ? and dt between ? and ? and item_id is not null
        order by ts, user_id, item_id
        """,
        [event_type, first, last],
    ).df()
    known = np.isin(df.item_id.to_numpy(np.int64), catalogue.item_id)
    df = df[known]
    return Events(
        user_id=df.user_id.to_numpy(np.int64),
        item=catalogue.index(df.item_id.to_numpy(np.int64)),
        ts_us=_ts_us(df.ts.to_numpy()),
        day=df.day.to_numpy().astype("datetime64[D]"),
    )


def load_unclicked_impressions(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, first: dt.date, last: dt.date
) -> Events:
    """Impressions of days first..last whose user did not click that item that day (hard negatives)."""
    df = con.execute(
        """
        with imp as (
            select user_id, item_id, min(ts) as ts, cast(dt as date) as day
            from raw.events where event_type = 'impression' and dt between $first and $last
            group by all
        ),
        clk as (
            select distinct user_id, item_id, cast(dt as date) as day
            from raw.events where event_type = 'click' and dt between $first and $last
        )
        select i.user_id, i.item_id, i.ts, i.day
        from imp as i anti join clk as c using (user_id, item_id, day)
        order by i.ts, i.user_id, i.item_id
        """,
        {"first": first, "last": last},
    ).df()
    df = df[np.isin(df.item_id.to_numpy(np.int64), catalogue.item_id)]
    return Events(
        user_id=df.user_id.to_numpy(np.int64),
        item=catalogue.index(df.item_id.to_numpy(np.int64)),
        ts_us=_ts_us(df.ts.to_numpy()),
        day=df.day.to_numpy().astype("datetime64[D]"),
    )


def load_follows(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """Explicit follow edges standing at the end of `as_of`: (user_id, author_id) arrays (the last
    action per pair decides)."""
    df = con.execute(
        """
        select user_id, author_id
        from raw.follows
        where dt <= ?
        qualify row_number() over (partition by user_id, author_id order by ts desc, action desc) = 1
            and action = 'follow'
        order by user_id, author_id
        """,
        [as_of],
    ).df()
    return df.user_id.to_numpy(np.int64), df.author_id.to_numpy(np.int64)


def load_implicit_follows(
    con: duckdb.DuckDBPyConnection, day: dt.date
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The implicit follows dbt built for `day` (the implicit_follows mart): (user_id, author_id,
    affinity) arrays; empty, with a warning, when the mart or the day is not built."""
    if "implicit_follows" not in table_names(con):
        log.warning("implicit_follows is not built: U2A2I uses explicit follows only")
        df = pd.DataFrame({"user_id": [], "author_id": [], "affinity": []})
    else:
        df = con.execute(
            "select user_id, author_id, affinity from implicit_follows where day = ? order by user_id, author_id", [day]
        ).df()
        if df.empty:
            log.warning("implicit_follows has no row for %s: U2A2I uses explicit follows only", day)
    return df.user_id.to_numpy(np.int64), df.author_id.to_numpy(np.int64), df.affinity.to_numpy(np.float64)


def data_hash(catalogue: Catalogue, first_day: dt.date, *events: Events) -> str:
    """sha256 over a model's training arrays (external ids, timestamps) and its first day."""
    h = hashlib.sha256(first_day.isoformat().encode())
    for e in events:
        for array in (e.user_id, catalogue.item_id[e.item], e.ts_us):
            h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()
