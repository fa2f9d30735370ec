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
from collections.abc import Iterable, Iterator, Mapping

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from models.common.tables import Catalogue, Events
from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect, table_names

log = logging.getLogger(__name__)


def _ts_us(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[us]").astype(np.int64)


def connect_read(cfg: PlatformConfig) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse."""
    return connect(cfg)


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


def _register(con: duckdb.DuckDBPyConnection, catalogue: Catalogue, users: np.ndarray | None) -> None:
    """The relations the event readers join: `catalogue_items` (the catalogue's ids) and, when
    given, `only_users`."""
    con.register("catalogue_items", pa.table({"item_id": catalogue.item_id}))
    if users is not None:
        con.register("only_users", pa.table({"user_id": np.asarray(users, np.int64)}))


def _events_sql(users: bool) -> str:
    """Events of $event_type on days $first..$last on catalogue items (of `only_users`)."""
    return f"""
        select event_id, user_id, item_id, ts, cast(dt as date) as day
        from raw.events semi join catalogue_items using (item_id) {"semi join only_users using (user_id)" if users else ""}
        where event_type = $event_type and dt between $first and $last
        """


def read_events(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date,
    users: np.ndarray | None = None,
) -> pa.Table:
    """Events (event_id, user_id, item_id, ts, day) of `event_type` on days first..last (both
    included) on catalogue items, of `users` only when given, time-ordered (ts, user_id, item_id,
    event_id)."""
    _register(con, catalogue, users)
    sql = _events_sql(users is not None) + " order by ts, user_id, item_id, event_id"
    return con.sql(sql, params={"event_type": event_type, "first": first, "last": last}).to_arrow_table()


def to_events(table: pa.Table, catalogue: Catalogue) -> Events:
    """Rows with user_id, item_id (on the catalogue), ts and day as Events (order kept)."""
    return Events(
        user_id=table.column("user_id").to_numpy().astype(np.int64),
        item=catalogue.index(table.column("item_id").to_numpy().astype(np.int64)),
        ts_us=_ts_us(table.column("ts").to_numpy()),
        day=table.column("day").to_numpy().astype("datetime64[D]"),
    )


def load_events(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date,
    users: np.ndarray | None = None,
) -> Events:
    """Events of `event_type` on days first..last (both included) on catalogue items, of `users`
    only when given, time-ordered."""
    return to_events(read_events(con, catalogue, event_type, first, last, users), catalogue)


def event_chunks(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date, rows: int
) -> Iterator[pa.Table]:
    """The events of `read_events` (same columns), streamed: day by day (one DuckDB query and sort
    per day), within a day in a fixed pseudo-random order (the hash of the event id), cut into
    tables of `rows` rows (the last one shorter; one may span days), each put back in read_events'
    order."""
    cur = con.cursor()
    _register(cur, catalogue, None)
    sql = _events_sql(False) + " order by hash(event_id), event_id"
    try:
        days = (first + dt.timedelta(days=i) for i in range((last - first).days + 1))
        readers = (cur.sql(sql, params={"event_type": event_type, "first": d, "last": d}).to_arrow_reader(rows)
                   for d in days)
        for table in rechunk(readers, rows):
            yield table.sort_by([(c, "ascending") for c in ("ts", "user_id", "item_id", "event_id")])
    finally:
        cur.close()


def rechunk(readers: Iterable[pa.RecordBatchReader], rows: int, key: str | None = None) -> Iterator[pa.Table]:
    """The record batches of `readers`, read one after the other, as tables of exactly `rows` rows
    (the last one shorter; none when there are no rows). With `key` (a column whose equal values
    are contiguous) a run of equal values is never split: a table ends where the value changes at
    or after `rows` rows (it holds fewer than `rows` + the longest run)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for reader in readers:
        for batch in reader:
            pending.append(batch)
            size += batch.num_rows
            while size >= rows:
                table = pa.Table.from_batches(pending)
                cut = rows if key is None else _run_end(table.column(key).to_numpy(), rows)
                if cut is None:  # the run goes on in the next batch
                    break
                yield table.slice(0, cut)
                rest = table.slice(cut)
                pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending)


def _run_end(values: np.ndarray, rows: int) -> int | None:
    """The first position at or after `rows` whose value differs from the one at rows - 1 (None: none yet)."""
    change = np.flatnonzero(values[rows:] != values[rows - 1])
    return rows + int(change[0]) if len(change) else None


def user_counts(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date
) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct users of `load_events`' events, their number of events)."""
    _register(con, catalogue, None)
    sql = f"select user_id, count(*) as n from ({_events_sql(False)}) group by user_id order by user_id"
    got = con.sql(sql, params={"event_type": event_type, "first": first, "last": last}).fetchnumpy()
    return got["user_id"].astype(np.int64), got["n"].astype(np.int64)


def item_counts(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date
) -> np.ndarray:
    """(len(catalogue),) float64 count of `load_events`' events per catalogue row."""
    _register(con, catalogue, None)
    sql = f"select item_id, count(*) as n from ({_events_sql(False)}) group by item_id"
    got = con.sql(sql, params={"event_type": event_type, "first": first, "last": last}).fetchnumpy()
    counts = np.zeros(len(catalogue), np.float64)
    counts[catalogue.index(got["item_id"].astype(np.int64))] = got["n"]
    return counts


def events_fingerprint(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event_type: str, first: dt.date, last: dt.date
) -> str:
    """`fingerprint` of `load_events`' events (user, item, time)."""
    _register(con, catalogue, None)
    sql = f"select user_id, item_id, ts from ({_events_sql(False)})"
    return fingerprint(con, sql, {"event_type": event_type, "first": first, "last": last})


def fingerprint(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, object]) -> str:
    """sha256 of the rows of a query as a multiset (any order): their count and the sum of DuckDB's
    hash of each row, computed in DuckDB (nothing materialised here)."""
    n, total = con.sql(f"select count(*), coalesce(sum(hash(t)), 0) from ({sql}) as t", params=dict(params)).fetchall()[0]
    return hashlib.sha256(f"{n}:{total}".encode()).hexdigest()


def load_unclicked_impressions(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, first: dt.date, last: dt.date,
    users: np.ndarray | None = None,
) -> Events:
    """Impressions on catalogue items of days first..last whose user did not click that item that
    day (hard negatives), of `users` only when given, time-ordered."""
    _register(con, catalogue, users)
    return to_events(con.sql(_unclicked_sql(users is not None) + " order by ts, user_id, item_id",
                             params={"first": first, "last": last}).to_arrow_table(), catalogue)


def unclicked_fingerprint(con: duckdb.DuckDBPyConnection, catalogue: Catalogue, first: dt.date, last: dt.date) -> str:
    """`fingerprint` of `load_unclicked_impressions`' rows."""
    _register(con, catalogue, None)
    return fingerprint(con, _unclicked_sql(False), {"first": first, "last": last})


def _unclicked_sql(users: bool) -> str:
    only = "semi join only_users using (user_id)" if users else ""
    return f"""
        with imp as (
            select user_id, item_id, min(ts) as ts, cast(dt as date) as day
            from raw.events semi join catalogue_items using (item_id) {only}
            where event_type = 'impression' and dt between $first and $last
            group by all
        ),
        clk as (
            select distinct user_id, item_id, cast(dt as date) as day
            from raw.events {only} where event_type = 'click' and dt between $first and $last
        )
        select i.user_id, i.item_id, i.ts, i.day
        from imp as i anti join clk as c using (user_id, item_id, day)
        """


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
