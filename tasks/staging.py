"""Read one batch file into a typed Arrow table, with every row's data-row number (and CSV line).

CSV is read by DuckDB as all-VARCHAR columns with its rejects table (`rej_<table>`) collecting the
lines it cannot parse; Parquet is read as is. Every contract column whose source type differs is
TRY_CAST to the contract type, its uncast value kept as `_raw_<column>` (NULL typed + non-NULL raw
= wrong_type). SQL is built from contract names only; file paths are bound as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import csv_rows
from tasks.batch import BatchError, SourceFile
from tasks.contract import TABLES
from tasks.rules import ident

_INTEGERS = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "HUGEINT",
}
_TIMES = {"DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"}


@dataclass(frozen=True)
class Staged:
    """A file's rows: `_row`, `_line`, typed contract columns and `_raw_<c>` for cast columns."""

    data: pa.Table
    cast_columns: list[str]
    input_rows: int


def _cast(expr: str, source_type: str, target: str) -> str:
    """SQL converting a source column to its contract type; NULL where the value does not fit."""
    if target == "VARCHAR":
        return f"CAST({expr} AS VARCHAR)"
    if target == "TIMESTAMP" and source_type in _TIMES:
        return f"TRY_CAST({expr} AS TIMESTAMP)"  # zoned values convert to UTC (session time zone)
    if target in ("BIGINT", "INTEGER") and source_type in _INTEGERS:
        return f"TRY_CAST({expr} AS {target})"  # NULL on overflow
    text = expr if source_type == "VARCHAR" else f"CAST({expr} AS VARCHAR)"
    if target == "TIMESTAMP":  # a UTC offset in the text is applied, not dropped
        return f"CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP)"
    # integers only: TRY_CAST alone would round '5.5' to 6
    return rf"CASE WHEN regexp_full_match({text}, '\s*[+-]?[0-9]+\s*') THEN TRY_CAST({text} AS {target}) END"


def _stage_csv(con: duckdb.DuckDBPyConnection, src: SourceFile) -> tuple[str, int]:
    """Load a CSV into temp table csv_<t> (c0..cN); return the SQL source with _row/_line and input rows.

    Also leaves `rej_<t>` (DuckDB's rejects) and `rejlines_<t>` (row_number, line of each rejected row).
    """
    t = src.table
    cols = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(src.header))) + "}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE csv_{t} AS SELECT * FROM read_csv($path, columns = {cols}, "
        "header = true, auto_detect = false, delim = ',', quote = '\"', escape = '\"', "
        f"store_rejects = true, rejects_table = 'rej_{t}', rejects_scan = 'rejscan_{t}')",
        {"path": str(src.path)},
    )
    emitted = con.execute(f"SELECT count(*) FROM csv_{t}").fetchall()[0][0]
    rejected = np.array(
        [line - 1 for (line,) in con.execute(f"SELECT DISTINCT line FROM rej_{t} ORDER BY 1").fetchall()],
        dtype=np.int64,
    )
    raw = src.path.read_bytes()
    if csv_rows.is_simple(raw) and not len(rejected) and csv_rows.simple_row_count(raw) == emitted:
        con.register(
            f"rejlines_{t}",
            pa.table({"row_number": pa.array([], pa.int64()), "line": pa.array([], pa.int64())}),
        )
        return f"(SELECT *, rowid + 1 AS _row, rowid + 2 AS _line FROM csv_{t})", emitted
    records = csv_rows.scan_records(raw)
    parsed = ~np.isin(records.row, rejected)
    if int(parsed.sum()) != emitted or len(records.row) != emitted + len(rejected):
        raise BatchError(
            f"{src.path}: cannot number its rows ({len(records.row)} records found, DuckDB parsed "
            f"{emitted} and rejected {len(rejected)}); check the quoting"
        )
    con.register(f"rowmap_{t}", pa.table({"_row": records.row[parsed], "_line": records.line[parsed]}))
    con.register(
        f"rejlines_{t}", pa.table({"row_number": records.row[~parsed], "line": records.line[~parsed]})
    )
    return f"(SELECT * FROM csv_{t} POSITIONAL JOIN rowmap_{t})", emitted + len(rejected)


def _read_exact_parquet(src: SourceFile) -> Staged | None:
    """Fast path: a Parquet file whose columns already have the contract types is read as is."""
    schema = TABLES[src.table].arrow_schema()
    found = pq.read_schema(src.path)
    for name in src.columns:
        typ = found.field(name).type
        if (typ.value_type if pa.types.is_dictionary(typ) else typ) != schema.field(name).type:
            return None
    data = pq.read_table(src.path, columns=list(src.columns), pre_buffer=False)
    n = data.num_rows
    columns = {"_row": pa.array(np.arange(1, n + 1, dtype=np.int64)), "_line": pa.nulls(n, pa.int64())}
    for f in schema:
        columns[f.name] = data[f.name].cast(f.type) if f.name in src.columns else pa.nulls(n, f.type)
    return Staged(data=pa.table(columns), cast_columns=[], input_rows=n)


def stage(con: duckdb.DuckDBPyConnection, src: SourceFile) -> Staged:
    """Read `src` into a typed Arrow table (rows in file order)."""
    if src.fmt == "parquet" and (exact := _read_exact_parquet(src)):
        return exact
    table = TABLES[src.table]
    params: dict[str, str] = {}
    if src.fmt == "csv":
        base, input_rows = _stage_csv(con, src)
        types = {c: "VARCHAR" for c in src.columns}
        where = {c: f"c{pos}" for c, pos in src.columns.items()}
        parts = ["_row", "_line"]
    else:
        base, params = "read_parquet($path, file_row_number = true)", {"path": str(src.path)}
        input_rows = pq.ParquetFile(src.path).metadata.num_rows
        described = con.execute(f"DESCRIBE SELECT * FROM {base}", params).fetchall()
        types = {name: typ for name, typ, *_ in described if name in src.columns}
        where = {c: ident(c) for c in src.columns}
        parts = ["file_row_number + 1 AS _row", "CAST(NULL AS BIGINT) AS _line"]
    cast_columns = []
    for col in table.columns:
        name = ident(col.name)
        if col.name not in src.columns:
            parts.append(f"CAST(NULL AS {col.sql_type}) AS {name}")
        elif types[col.name] == col.sql_type:
            parts.append(f"{where[col.name]} AS {name}")
        else:
            cast_columns.append(col.name)
            parts.append(f"{where[col.name]} AS {ident('_raw_' + col.name)}")
            parts.append(f"{_cast(where[col.name], types[col.name], col.sql_type)} AS {name}")
    data = con.sql(f"SELECT {', '.join(parts)} FROM {base}", params=params or None).to_arrow_table()
    if src.fmt == "csv":
        con.execute(f"DROP TABLE csv_{src.table}")
    return Staged(data=data, cast_columns=cast_columns, input_rows=input_rows)
