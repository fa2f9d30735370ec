"""The ranking examples (docs/METHODS.md "Ranking examples"), read from the warehouse as numpy: one row per (day, user,
item) shown, with its labels, one column per ranking head (tasks.core.config.RANKING_HEADS), as the dbt
model `ranking_exposures` builds them per day (`build_exposures`), plus each example's user
segments (dbt's int_user_day_segments, when built).

Model features beyond the ids (user features, item catalogue, behaviour sequences) come from
tasks/retrieval/data.py and tasks/train_two_tower.load_users, as for retrieval.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import NamedTuple

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from models.common.tables import Exposures
from tasks.core.config import RANKING_HEADS, PlatformConfig
from tasks.core.dbt_runner import run_dbt
from tasks.retrieval.data import fingerprint, rechunk

TABLE = "ranking_exposures"


def build_exposures(cfg: PlatformConfig, ds_from: dt.date, ds: dt.date) -> None:
    """dbt: (re)build ranking_exposures for the days [ds_from, ds], with its tests (nightly_training
    runs the same selection as its `ranking.dbt` task group)."""
    run_dbt(cfg, ["build", "--selector", "ranking"], ds=ds.isoformat(), ds_from=ds_from.isoformat())


_COLUMNS = f"""day, user_id, item_id, shown_at, coalesce(position, -1) as position,
    {", ".join(f'"{h}"' for h in RANKING_HEADS)}"""


def load_exposures(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date) -> Exposures:
    """The examples of the days first..last (both included)."""
    sql = f"select {_COLUMNS} from {TABLE} where day between ? and ? order by day, shown_at, user_id, item_id"
    return to_exposures(con.sql(sql, params=[first, last]).to_arrow_table())


def to_exposures(table: pa.Table) -> Exposures:
    """Rows of `load_exposures`' columns as Exposures (order kept)."""
    return Exposures(
        day=table.column("day").to_numpy().astype("datetime64[D]"),
        user_id=table.column("user_id").to_numpy().astype(np.int64),
        item_id=table.column("item_id").to_numpy().astype(np.int64),
        shown_us=table.column("shown_at").to_numpy().astype("datetime64[us]").astype(np.int64),
        position=table.column("position").to_numpy().astype(np.int64),
        labels=np.stack([table.column(h).to_numpy().astype(np.float32) for h in RANKING_HEADS], axis=1)
        if table.num_rows else np.zeros((0, len(RANKING_HEADS)), np.float32),
    )


Teacher = str | pd.DataFrame | None
"""A pre-ranking teacher: the name of a warehouse table of the full ranker's predictions
(distillation_predictions), or such rows in memory (a drill's, a test's), or None (labels only).
Its rows: day, user_id, item_id and p_<head> for every ranking head, one per exposure."""
TEACHER_COLUMNS = [f"p_{h}" for h in RANKING_HEADS]


def teacher_relation(con: duckdb.DuckDBPyConnection, teacher: Teacher) -> str | None:
    """The relation `con` reads the teacher from: the table's name, or rows in memory registered
    as the view `teacher_rows`."""
    if isinstance(teacher, pd.DataFrame):
        con.register("teacher_rows", teacher)
        return "teacher_rows"
    return teacher


def examples_sql(teacher: str | None, where: str) -> str:
    """The examples of `load_exposures`' columns whose day satisfies `where`, with the teacher's
    TEACHER_COLUMNS joined by (day, user_id, item_id) (NULL where it has no row) when given."""
    examples = f"select {_COLUMNS} from {TABLE} where {where}"
    if teacher is None:
        return examples
    return (f"select e.*, {', '.join(f't.{c}' for c in TEACHER_COLUMNS)} from ({examples}) as e left join "
            f"(select cast(day as date) as day, user_id, item_id, {', '.join(TEACHER_COLUMNS)} from {teacher} "
            f"where {where}) as t using (day, user_id, item_id)")


def exposure_chunks(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date, rows: int,
                    teacher: Teacher = None) -> Iterator[tuple[Exposures, np.ndarray | None]]:
    """The examples of `load_exposures`, streamed: day by day (one DuckDB query and sort per day),
    within a day the users in a fixed pseudo-random order (the hash of the id), cut into chunks of
    whole users of about `rows` rows (`rechunk` by user; one may span days), each put back in
    load_exposures' order; with a teacher, its (n, len(RANKING_HEADS)) float32 predictions of the
    chunk's rows (NaN where it has none), else None."""
    cur = con.cursor()
    try:
        source = teacher_relation(cur, teacher)
        sql = examples_sql(source, "day = $day") + " order by hash(user_id), user_id, item_id"
        days = (first + dt.timedelta(days=i) for i in range((last - first).days + 1))
        readers = (cur.sql(sql, params={"day": d}).to_arrow_reader(rows) for d in days)
        for table in rechunk(readers, rows, key="user_id"):
            chunk = to_exposures(table)
            order = np.lexsort((chunk.item_id, chunk.user_id, chunk.shown_us, chunk.day))
            p = None
            if source is not None:
                p = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in TEACHER_COLUMNS], axis=1)
                p = p.astype(np.float32)[order]
            yield chunk.select(order), p
    finally:
        cur.close()


class ExposureStats(NamedTuple):
    """What training needs to know of a window's examples before reading them."""

    users: np.ndarray  # sorted distinct user ids
    examples: int
    positives: np.ndarray  # (len(RANKING_HEADS),) int64 per head
    digest: str  # tasks.retrieval.data.fingerprint of the rows


def exposure_stats(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date) -> ExposureStats:
    """The ExposureStats of the examples of first..last, computed in DuckDB."""
    where = f"from {TABLE} where day between $first and $last"
    params = {"first": first, "last": last}
    users = con.sql(f"select distinct user_id {where} order by user_id", params=params).fetchnumpy()["user_id"]
    sums = ", ".join(f'coalesce(sum("{h}"), 0)' for h in RANKING_HEADS)
    n, *positives = con.sql(f"select count(*), {sums} {where}", params=params).fetchall()[0]
    return ExposureStats(users.astype(np.int64), int(n), np.array(positives, np.int64),
                         fingerprint(con, f"select {_COLUMNS} {where}", params))


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
