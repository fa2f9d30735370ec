"""The DuckDB warehouse: connections (one writer at a time) and the `raw` views over the lake.

Connections can read the lake on an object store (tasks.core.storage registers its filesystem) and
get the config's DuckDB settings (`warehouse.memory_limit`), as dbt's do (tasks/core/dbt_runner.py).
DuckDB allows one writing process per file. Inside Airflow every writer runs in the one-slot pool
`cfg.airflow.warehouse_pool`; `connect_writer` refuses to open the file for writing from a task
in any other pool. Readers open it read-only.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence

import duckdb
import pandas as pd
import pyarrow as pa

from tasks.core.config import PlatformConfig
from tasks.core.contract import FILL_CHANNEL, TABLES
from tasks.core.lake import QUARANTINE, scan_sql, schema_of
from tasks.core.storage import Location, register_filesystems

RAW_SCHEMA = "raw"
RAW_TABLES: tuple[str, ...] = (*TABLES, QUARANTINE)
_SQL_TYPES = {
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.string(): "VARCHAR",
    pa.timestamp("us"): "TIMESTAMP",
}


class WarehouseWriterError(PermissionError):
    """A warehouse write attempted outside the single-writer pool."""


def current_task_pool() -> tuple[str, str] | None:
    """(task label, pool) of the running Airflow task, or None outside a task."""
    sdk = sys.modules.get("airflow.sdk")  # a task process has imported it; don't load Airflow here
    if sdk is None:
        return None
    try:
        context = sdk.get_current_context()
    except RuntimeError:  # Airflow 3.3: "no context was found" outside a running task
        return None
    ti = context["ti"]
    return f"{ti.dag_id}.{ti.task_id}", ti.task.pool


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The names of the warehouse's tables and views."""
    return {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}


def duckdb_settings(cfg: PlatformConfig) -> dict[str, str]:
    """The DuckDB settings of every warehouse connection from the config (none unless set)."""
    return {"memory_limit": cfg.warehouse.memory_limit} if cfg.warehouse.memory_limit else {}


def connect(cfg: PlatformConfig, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse file; read-only unless asked (writes go through connect_writer)."""
    if not read_only:
        return connect_writer(cfg)
    path = cfg.warehouse_path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no warehouse yet; load a batch and refresh the views first")
    return _with_lake(cfg, duckdb.connect(str(path), read_only=True, config=duckdb_settings(cfg)))


def connect_writer(cfg: PlatformConfig) -> duckdb.DuckDBPyConnection:
    """A writing connection. Inside an Airflow task it must run in the warehouse pool (single writer)."""
    task = current_task_pool()
    if task is not None and task[1] != cfg.airflow.warehouse_pool:
        raise WarehouseWriterError(
            f"task {task[0]} runs in pool {task[1]!r}; warehouse writers must run in pool "
            f"{cfg.airflow.warehouse_pool!r} (one writer at a time)"
        )
    cfg.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    return _with_lake(cfg, duckdb.connect(str(cfg.warehouse_path), config=duckdb_settings(cfg)))


def _with_lake(cfg: PlatformConfig, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """`con`, able to read the `raw` views' files when the lake is on an object store."""
    register_filesystems(con, [cfg.lake_dir])
    return con


def _view_sql(lake: Location, table: str) -> str:
    """A view over every file of a lake table, day and compacted month files (tasks.core.lake.scan_sql),
    with the day column `dt`; typed and empty while the table has no files."""
    sql = scan_sql(lake, table)
    if sql is not None:
        return sql
    cols = [f'CAST(NULL AS {_SQL_TYPES[f.type]}) AS "{f.name}"' for f in schema_of(table)]
    return f"SELECT {', '.join(cols)}, CAST(NULL AS DATE) AS dt WHERE false"


def refresh_views(cfg: PlatformConfig) -> None:
    """(Re)create schema `raw` with one view per lake table (users, items, follows, events,
    quarantine) over the lake's Parquet files, by absolute path. Idempotent."""
    with connect_writer(cfg) as con:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}")
        for table in RAW_TABLES:
            con.execute(f"CREATE OR REPLACE VIEW {RAW_SCHEMA}.{table} AS {_view_sql(cfg.lake_dir, table)}")


def upsert(con: duckdb.DuckDBPyConnection, table: str, rows: pd.DataFrame, keys: Sequence[str], *,
           columns: str | None = None, stamp: str | None = None) -> None:
    """Write `rows` into `table`, replacing the rows that share their `keys` values, in one transaction
    on `con`: a re-run of a day gives the same table. The table is created if missing, with the
    column definitions `columns` (SQL, e.g. "day date, n bigint") or else the rows' own types;
    `stamp` names a timestamp column set to the time of writing. Columns of `rows` that an existing
    table lacks (written by an older version) are added, null in its older rows."""
    key = ", ".join(keys)
    con.register("new_rows", rows)
    stamped = f"select *, now() as {stamp} from new_rows" if stamp else "select * from new_rows"
    if columns:
        con.execute(f"create table if not exists {table} ({columns})")
    else:
        con.execute(f"create table if not exists {table} as {stamped} limit 0")
    have = {r[0] for r in con.execute(f"describe {table}").fetchall()}
    for name, kind, *_ in con.execute(f"describe {stamped}").fetchall():
        if name not in have:
            con.execute(f'alter table {table} add column "{name}" {kind}')
    con.execute("begin transaction")
    try:
        con.execute(f"delete from {table} where ({key}) in (select distinct {key} from new_rows)")
        con.execute(f"insert into {table} by name {stamped}")
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.unregister("new_rows")


def replace_rows(cfg: PlatformConfig, table: str, rows: pd.DataFrame, keys: Sequence[str], *,
                 columns: str | None = None, stamp: str | None = None) -> None:
    """`upsert` through a writer connection of its own."""
    with connect_writer(cfg) as con:
        upsert(con, table, rows, keys, columns=columns, stamp=stamp)


def model_chosen(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig, event_type: str, first: dt.date,
                 last: dt.date) -> pd.DataFrame:
    """(user_id, item_id), distinct, of the `event_type` events of days first..last on exposures a
    model chose (the closed loop's feeds): a `channel` other than null, the organic fill and the
    exploration pools. None on a lake without the column (a team's own logs, the organic simulator)."""
    if "channel" not in {r[0] for r in con.execute(f"describe {RAW_SCHEMA}.events").fetchall()}:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="int64")})
    unchosen = sorted({FILL_CHANNEL, *cfg.exploration_pools()})
    return con.execute(
        f"""
        select distinct user_id, item_id from {RAW_SCHEMA}.events
        where event_type = ? and dt between ? and ? and item_id is not null
          and channel is not null and channel not in ({", ".join("?" * len(unchosen))})
        """,
        [event_type, first, last, *unchosen],
    ).df()
