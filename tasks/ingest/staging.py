"""Read one batch file into a typed Arrow table, with every row's data-row number (and CSV line).

CSV is read by DuckDB as all-VARCHAR columns with its rejects table (`rej_<table>`) collecting the
records it cannot parse (bad field count or quoting, bytes that are not UTF-8); Parquet is read by
pyarrow, rows with text that is not UTF-8 set apart. Either format gives the same two tables: the
rows read and the rows that could not be read (UNREADABLE_SCHEMA, quarantined as unparseable_row).
Every contract column whose source type differs is TRY_CAST to the contract type, its uncast value
kept as `_raw_<column>` (NULL typed + non-NULL raw = wrong_type). SQL is built from contract names
only; file paths are bound as parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.contract import TABLES
from tasks.ingest import csv_rows
from tasks.ingest.batch import BatchError, SourceFile
from tasks.ingest.rules import ident

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

UNREADABLE_SCHEMA = pa.schema(
    [
        pa.field("_row", pa.int64()),
        pa.field("_line", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw_record", pa.string()),
    ]
)


@dataclass(frozen=True)
class Staged:
    """A file's rows: `data` (`_row`, `_line`, typed contract columns and `_raw_<c>` for cast
    columns) and `unreadable` (UNREADABLE_SCHEMA: rows that could not be read, with the column where
    reading failed when known, why, and the row as JSON text, undecodable bytes as \\xNN)."""

    data: pa.Table
    cast_columns: list[str]
    input_rows: int
    unreadable: pa.Table


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


def _utf8_error(data: bytes, start: int, end: int) -> str | None:
    """Where data[start:end] stops being UTF-8, as 'not valid UTF-8 at byte N' (N: 0-based offset
    in the file); None if it is UTF-8."""
    try:
        data[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 at byte {start + e.start}"
    return None


def _unreadable(src: SourceFile, raw: bytes, records: csv_rows.CsvRecords, rejects: list[tuple]) -> pa.Table:
    """The records DuckDB rejected, one row each as UNREADABLE_SCHEMA; `rejects` holds per record
    (data row, DuckDB's column c<i>, its messages, whether the bytes are not UTF-8)."""
    names = {f"c{i}": name for i, name in enumerate(src.header)}
    out: dict[str, list] = {name: [] for name in UNREADABLE_SCHEMA.names}
    for row, column, message, bad_encoding in rejects:
        i = int(np.searchsorted(records.row, row))
        start, end = int(records.start[i]), int(records.end[i])
        out["_row"].append(row)
        out["_line"].append(int(records.line[i]))
        out["field"].append(names.get(column))
        out["detail"].append((bad_encoding and _utf8_error(raw, start, end)) or message)
        text = raw[start:end].decode("utf-8", "backslashreplace").removesuffix("\r")
        out["raw_record"].append(json.dumps(text, ensure_ascii=False))
    return pa.table(out, schema=UNREADABLE_SCHEMA)


def _stage_csv(con: duckdb.DuckDBPyConnection, src: SourceFile) -> tuple[str, int, pa.Table]:
    """Load a CSV into temp table csv_<t> (c0..cN); return the SQL source with _row/_line, the
    input rows and the rows DuckDB could not read (from its rejects table rej_<t>)."""
    t = src.table
    cols = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(src.header))) + "}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE csv_{t} AS SELECT * FROM read_csv($path, columns = {cols}, "
        "header = true, auto_detect = false, delim = ',', quote = '\"', escape = '\"', "
        f"store_rejects = true, rejects_table = 'rej_{t}', rejects_scan = 'rejscan_{t}')",
        {"path": str(src.path)},
    )
    emitted = con.execute(f"SELECT count(*) FROM csv_{t}").fetchall()[0][0]
    rejects = con.execute(
        "SELECT line - 1, min(column_name), string_agg(DISTINCT error_message, '; '), "
        f"bool_or(error_type = 'INVALID ENCODING') FROM rej_{t} GROUP BY line ORDER BY line"
    ).fetchall()
    rejected = np.array([row for row, *_ in rejects], dtype=np.int64)
    raw = src.path.read_bytes()
    if csv_rows.is_simple(raw) and not len(rejected) and csv_rows.simple_row_count(raw) == emitted:
        source = f"(SELECT *, rowid + 1 AS _row, rowid + 2 AS _line FROM csv_{t})"
        return source, emitted, UNREADABLE_SCHEMA.empty_table()
    records = csv_rows.scan_records(raw)
    parsed = ~np.isin(records.row, rejected)
    if int(parsed.sum()) != emitted or len(records.row) != emitted + len(rejected):
        raise BatchError(
            f"{src.path}: cannot number its rows ({len(records.row)} records found, DuckDB parsed "
            f"{emitted} and rejected {len(rejected)}); check the quoting"
        )
    con.register(f"rowmap_{t}", pa.table({"_row": records.row[parsed], "_line": records.line[parsed]}))
    source = f"(SELECT * FROM csv_{t} POSITIONAL JOIN rowmap_{t})"
    return source, emitted + len(rejected), _unreadable(src, raw, records, rejects)


def _is_text(typ: pa.DataType) -> bool:
    typ = typ.value_type if pa.types.is_dictionary(typ) else typ
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _utf8_errors(column: pa.ChunkedArray) -> dict[int, str]:
    """The rows (0-based) of a Parquet text column whose value is not valid UTF-8, with where it breaks."""
    if not _is_text(column.type):
        return {}
    values = column.cast(pa.large_binary())
    try:
        values.cast(pa.large_string())  # checks every value at once
        return {}
    except pa.ArrowInvalid:
        pass
    out = {}
    for row, value in enumerate(values.to_pylist()):
        try:
            value is None or value.decode("utf-8")
        except UnicodeDecodeError as e:
            out[row] = f"not valid UTF-8 at byte {e.start} of the value"
    return out


def _as_text(value: object) -> object:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _read_parquet(src: SourceFile) -> tuple[pa.Table, pa.Table]:
    """The file's contract columns with `_row`; apart from them, as UNREADABLE_SCHEMA, the rows with
    text that is not valid UTF-8 (DuckDB would refuse the whole file over one such value)."""
    data = pq.read_table(src.path, columns=list(src.columns), pre_buffer=False)
    bad: dict[int, tuple[str, str]] = {}
    for name in src.columns:
        for row, detail in _utf8_errors(data[name]).items():
            bad.setdefault(row, (name, detail))
    data = data.add_column(0, "_row", pa.array(np.arange(1, data.num_rows + 1, dtype=np.int64)))
    if not bad:
        return data, UNREADABLE_SCHEMA.empty_table()
    rows = sorted(bad)
    picked = data.take(rows).drop_columns(["_row"])
    picked = picked.cast(pa.schema([f.with_type(pa.large_binary()) if _is_text(f.type) else f for f in picked.schema]))
    unreadable = pa.table(
        {
            "_row": [row + 1 for row in rows],
            "_line": [None] * len(rows),
            "field": [bad[row][0] for row in rows],
            "detail": [bad[row][1] for row in rows],
            "raw_record": [
                json.dumps({k: _as_text(v) for k, v in record.items()}, default=str, ensure_ascii=False)
                for record in picked.to_pylist()
            ],
        },
        schema=UNREADABLE_SCHEMA,
    )
    keep = np.ones(data.num_rows, dtype=bool)
    keep[rows] = False
    return data.filter(keep), unreadable


def _exact_parquet(src: SourceFile, rows: pa.Table) -> pa.Table | None:
    """Fast path: Parquet columns that already have the contract types are taken as they are."""
    schema = TABLES[src.table].arrow_schema()
    for name in src.columns:
        typ = rows.schema.field(name).type
        if (typ.value_type if pa.types.is_dictionary(typ) else typ) != schema.field(name).type:
            return None
    n = rows.num_rows
    columns = {"_row": rows["_row"], "_line": pa.nulls(n, pa.int64())}
    for f in schema:
        columns[f.name] = rows[f.name].cast(f.type) if f.name in src.columns else pa.nulls(n, f.type)
    return pa.table(columns)


def stage(con: duckdb.DuckDBPyConnection, src: SourceFile) -> Staged:
    """Read `src` into a typed Arrow table (rows in file order) and the rows that could not be read."""
    t = src.table
    if src.fmt == "csv":
        base, input_rows, unreadable = _stage_csv(con, src)
        types = {c: "VARCHAR" for c in src.columns}
        where = {c: f"c{pos}" for c, pos in src.columns.items()}
        parts = ["_row", "_line"]
    else:
        input_rows = pq.ParquetFile(src.path).metadata.num_rows
        rows, unreadable = _read_parquet(src)
        if (exact := _exact_parquet(src, rows)) is not None:
            return Staged(data=exact, cast_columns=[], input_rows=input_rows, unreadable=unreadable)
        base = f"parquet_{t}"
        con.register(base, rows)
        described = con.execute(f"DESCRIBE SELECT * FROM {base}").fetchall()
        types = {name: typ for name, typ, *_ in described if name in src.columns}
        where = {c: ident(c) for c in src.columns}
        parts = ["_row", "CAST(NULL AS BIGINT) AS _line"]
    cast_columns = []
    for col in TABLES[t].columns:
        name = ident(col.name)
        if col.name not in src.columns:
            parts.append(f"CAST(NULL AS {col.sql_type}) AS {name}")
        elif types[col.name] == col.sql_type:
            parts.append(f"{where[col.name]} AS {name}")
        else:
            cast_columns.append(col.name)
            parts.append(f"{where[col.name]} AS {ident('_raw_' + col.name)}")
            parts.append(f"{_cast(where[col.name], types[col.name], col.sql_type)} AS {name}")
    data = con.sql(f"SELECT {', '.join(parts)} FROM {base}").to_arrow_table()
    if src.fmt == "csv":
        con.execute(f"DROP TABLE csv_{t}")
    else:
        con.unregister(base)
    return Staged(data=data, cast_columns=cast_columns, input_rows=input_rows, unreadable=unreadable)
