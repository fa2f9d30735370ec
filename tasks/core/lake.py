"""The Parquet lake: where validated and quarantined rows live, and how files get there.

Layout (under `cfg.lake_dir`):

    <table>/dt=YYYY-MM-DD/batch-<batch_id>.parquet       valid rows, the contract schema
    quarantine/dt=YYYY-MM-DD/batch-<batch_id>.parquet    rejected rows, QUARANTINE_SCHEMA
    <table>/month=YYYY-MM/compacted.parquet              a compacted month (`compact`): its day files'
                                                         rows, plus `dt` (their day) and `_batch`
    _batches/<batch_id>.json                             the batch manifest, written last

A batch id is a content hash of the batch, so loading a batch again rewrites the same paths with
the same bytes. Every file is written atomically (tasks.core.atomic: a hidden temporary name, then
`os.replace`; on an object store, one upload). The lake may be a local folder or a URL
(tasks.core.storage).

A day file shadows the month-file rows of its (day, batch): `scan_sql` (the raw views) skips them.
So compaction (write the month file, then delete the day files) and a reload after compaction
(write the batch's day files again) never show a row twice or lose one, at any step.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.atomic import atomic_write
from tasks.core.contract import TABLES
from tasks.core.storage import Location, parquet_rows, read_parquet, remove_dir_if_empty

QUARANTINE = "quarantine"
MANIFESTS = "_batches"
LAKE_TABLES: tuple[str, ...] = (*TABLES, QUARANTINE)
MONTH_FILE = "compacted.parquet"
DAY_COLUMN = "dt"  # month files: the day of each row (a day file's day is its folder)
BATCH_COLUMN = "_batch"  # month files: the batch of each row (a day file's batch is its name)
_DAY_FILE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/batch-(\w+)\.parquet$")
_SQL_TYPES = {
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.string(): "VARCHAR",
    pa.timestamp("us"): "TIMESTAMP",
    pa.date32(): "DATE",
}

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("row_number", pa.int64(), nullable=False),
        pa.field("line_number", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("raw_record", pa.string(), nullable=False),
    ]
)


def schema_of(table: str) -> pa.Schema:
    """The Parquet schema of a lake table (a contract table or `quarantine`)."""
    return QUARANTINE_SCHEMA if table == QUARANTINE else TABLES[table].arrow_schema()


def partition_dir(lake: Location, table: str, day: dt.date) -> Location:
    """The hive partition folder of `table` for `day`."""
    return lake / table / f"dt={day.isoformat()}"


def batch_file(lake: Location, table: str, day: dt.date, batch_id: str) -> Location:
    """The file one batch writes into one partition."""
    return partition_dir(lake, table, day) / f"batch-{batch_id}.parquet"


def manifest_path(lake: Location, batch_id: str) -> Location:
    """Where the manifest of a loaded batch lives."""
    return lake / MANIFESTS / f"{batch_id}.json"


def write_parquet(data: pa.Table, path: Location, schema: pa.Schema) -> None:
    """Write `data` cast to `schema` atomically: snappy, strings dictionary-encoded, min/max
    statistics on the numbers and timestamps (the columns queries prune on).

    The output depends only on the rows and their order, so rewriting the same rows gives the
    same bytes.
    """
    data = data.select(schema.names).cast(schema)
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    others = [f.name for f in schema if f.name not in strings]
    atomic_write(
        path,
        lambda tmp: pq.write_table(
            data, tmp, compression="snappy", use_dictionary=strings, write_statistics=others
        ),
    )


def write_manifest(lake: Location, batch_id: str, manifest: dict[str, Any]) -> Location:
    """Write the batch manifest atomically; it marks the batch as completely loaded."""
    path = manifest_path(lake, batch_id)
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def read_manifest(lake: Location, batch_id: str) -> dict[str, Any] | None:
    """The manifest of a loaded batch, or None if it was never (completely) loaded."""
    path = manifest_path(lake, batch_id)
    return json.loads(path.read_text()) if path.exists() else None


def month_schema(table: str) -> pa.Schema:
    """The Parquet schema of a compacted month file: the table's, plus `dt` and `_batch`."""
    return (
        schema_of(table)
        .append(pa.field(DAY_COLUMN, pa.date32(), nullable=False))
        .append(pa.field(BATCH_COLUMN, pa.string(), nullable=False))
    )


def month_file(lake: Location, table: str, month: dt.date) -> Location:
    """The compacted file of `table` for the month of `month`."""
    return lake / table / f"month={month:%Y-%m}" / MONTH_FILE


def table_files(
    lake: Location, table: str, days: Iterable[dt.date] | None = None, exclude_batch: str | None = None
) -> list[Location]:
    """The day files of `table` (all partitions, or only `days`), optionally without one batch's."""
    if days is None:
        files = (lake / table).glob("dt=*/batch-*.parquet")
    else:
        files = (f for d in days for f in partition_dir(lake, table, d).glob("batch-*.parquet"))
    skip = f"batch-{exclude_batch}.parquet"
    return sorted(f for f in files if f.name != skip)


def month_files(lake: Location, table: str, days: Iterable[dt.date] | None = None) -> list[Location]:
    """The compacted month files of `table` (all, or those holding the months of `days`)."""
    if days is None:
        return sorted((lake / table).glob(f"month=*/{MONTH_FILE}"))
    return sorted(f for f in {month_file(lake, table, d) for d in days} if f.exists())


def rows_sql(
    lake: Location, table: str, columns: list[str], days: list[dt.date] | None = None, exclude_batch: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """SQL and its parameters selecting `columns` of the lake rows of `table` (only those of `days`
    when given), without batch `exclude_batch`'s rows; None when there are no such files. A day
    shadowed by a day file (see the module doc) may be read twice: fine for tests of membership."""
    cols = ", ".join(f'"{c}"' for c in columns)
    parts, params = [], {}
    if day_files := table_files(lake, table, days, exclude_batch):
        parts.append(f"SELECT {cols} FROM read_parquet($day_files)")
        params["day_files"] = [str(f) for f in day_files]
    if months := month_files(lake, table, days):
        where = [f"{BATCH_COLUMN} IS DISTINCT FROM $batch"]
        params.update(month_files=[str(f) for f in months], batch=exclude_batch)
        if days is not None:
            where.append(f"list_contains($days, {DAY_COLUMN})")
            params["days"] = sorted(set(days))
        parts.append(f"SELECT {cols} FROM read_parquet($month_files) WHERE {' AND '.join(where)}")
    return (" UNION ALL ".join(parts), params) if parts else None


def _literal(path: Location) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def scan_sql(lake: Location, table: str) -> str | None:
    """SQL over every row of a lake table with its day `dt` (DATE), whatever the layout: day files
    (the day from their hive folder, so a filter on `dt` reads only that day's folders) and month
    files (the day from their `dt` column, minus the rows that a day file of the same day and batch
    shadows). Columns missing from older files read as NULL. None while the table has no files; once
    it has, the SQL does not depend on which files exist (an empty layout reads as no rows), so a
    view over it stays right through compaction."""
    folder = lake.resolve() / table
    if not any(folder.glob("*=*/*.parquet")):
        return None
    columns = ", ".join(f'"{f.name}"' for f in schema_of(table))
    typed_day = ", ".join(f'CAST(NULL AS {_SQL_TYPES[f.type]}) AS "{f.name}"' for f in schema_of(table))
    typed_month = ", ".join(f'CAST(NULL AS {_SQL_TYPES[f.type]}) AS "{f.name}"' for f in month_schema(table))
    day_files = _literal(folder / "dt=*" / "*.parquet")
    month_files = _literal(folder / "month=*" / "*.parquet")
    batch_files = _literal(folder / "dt=*" / "batch-*.parquet")
    return (
        f"SELECT {columns}, {DAY_COLUMN} FROM (SELECT * FROM read_parquet({day_files}, hive_partitioning = true, "
        f"hive_types = {{'{DAY_COLUMN}': DATE}}, union_by_name = true, allow_empty = true) "
        f"UNION ALL BY NAME SELECT {typed_day}, CAST(NULL AS DATE) AS {DAY_COLUMN} WHERE false) "
        f"UNION ALL BY NAME "
        f"SELECT {columns}, {DAY_COLUMN} FROM (SELECT * FROM read_parquet({month_files}, hive_partitioning = false, "
        f"union_by_name = true, allow_empty = true) UNION ALL BY NAME SELECT {typed_month} WHERE false) "
        f"WHERE 'dt=' || strftime({DAY_COLUMN}, '%Y-%m-%d') || '/batch-' || {BATCH_COLUMN} || '.parquet' "
        f"NOT IN (SELECT regexp_extract(file, '[^/]+/[^/]+$') FROM glob({batch_files}))"
    )


def batch_files(lake: Location, batch_id: str) -> list[Location]:
    """Every data and quarantine day file a batch has in the lake."""
    return sorted(lake.glob(f"*/dt=*/batch-{batch_id}.parquet"))


def _day_file_key(lake: Location, path: Location) -> tuple[str, dt.date, str]:
    """(table, day, batch id) of a day file."""
    table, rest = path.relative_to(lake).as_posix().split("/", 1)
    m = _DAY_FILE.match(rest)
    if not m:
        raise ValueError(f"{path}: not a lake day file")
    return table, dt.date.fromisoformat(m.group(1)), m.group(2)


def _month_rows(lake: Location, path: Location) -> pa.Table:
    """A day file's rows in its table's month schema (columns it lacks as NULL, plus dt and _batch)."""
    table, day, batch = _day_file_key(lake, path)
    rows = read_parquet(path)
    n = rows.num_rows
    columns = [rows[f.name] if f.name in rows.column_names else pa.nulls(n, f.type) for f in schema_of(table)]
    columns += [pa.array([day] * n, pa.date32()), pa.array([batch] * n, pa.string())]
    return pa.Table.from_arrays(columns, schema=month_schema(table))


def _rewrite_month(
    lake: Location, table: str, month: dt.date, add: list[Location], drop: set[tuple[dt.date, str]]
) -> Location:
    """Rewrite a month file: its rows minus those of the (day, batch) pairs in `drop` or in the day
    files `add`, plus the rows of `add`, sorted by day and batch (file order within); atomically.
    An empty result removes the file."""
    path = month_file(lake, table, month)
    replaced = drop | {_day_file_key(lake, f)[1:] for f in add}
    parts = [_month_rows(lake, f) for f in add]
    if path.exists():
        old = read_parquet(path, schema=month_schema(table))
        keys = pc.binary_join_element_wise(
            pc.cast(old[DAY_COLUMN], pa.string()), old[BATCH_COLUMN], "/"
        )
        gone = pa.array([f"{d.isoformat()}/{b}" for d, b in sorted(replaced)], pa.string())
        parts.insert(0, old.filter(pc.invert(pc.is_in(keys, gone))))
    rows = pa.concat_tables(parts) if parts else month_schema(table).empty_table()
    if not rows.num_rows:
        path.unlink(missing_ok=True)
        return path
    order = pc.sort_indices(rows, [(DAY_COLUMN, "ascending"), (BATCH_COLUMN, "ascending")])  # stable
    write_parquet(rows.take(order), path, month_schema(table))
    return path


def _first_of_month(day: dt.date) -> dt.date:
    return day.replace(day=1)


@dataclass(frozen=True)
class Compacted:
    """One month of one table compacted: the day files merged into its month file."""

    table: str
    month: dt.date
    day_files: int
    rows: int


def compact(lake: Location, before: dt.date) -> list[Compacted]:
    """Merge the day files of every month that ends before `before` into one file per table and
    month (`month=YYYY-MM/compacted.parquet`; a month compacted before gets its new day files).

    Per month: the month file is written (atomically) first, then the day files are deleted; a day
    file shadows its rows in the month file until it is gone, so readers of `scan_sql` never see a
    row twice or miss one (the raw views read through `scan_sql`: refresh them once after an
    upgrade). Run it when no load is running."""
    done = []
    for table in LAKE_TABLES:
        closed = [f for f in table_files(lake, table) if _day_file_key(lake, f)[1] < _first_of_month(before)]
        for month, group in groupby(closed, key=lambda f: _first_of_month(_day_file_key(lake, f)[1])):
            files = list(group)
            path = _rewrite_month(lake, table, month, files, set())
            for f in files:
                f.unlink()
                remove_dir_if_empty(f.parent)
            done.append(Compacted(table, month, len(files), parquet_rows(path)))
    return done


def remove_stale(lake: Location, batch_id: str, keep: Iterable[Location]) -> list[Location]:
    """Delete the batch's day files that a reload did not rewrite (e.g. rows now quarantined), and
    its rows in month files (compacted since its last load, per its manifest) that no day file of
    the reload shadows. Returns the files deleted or rewritten."""
    keep = set(keep)
    stale = [f for f in batch_files(lake, batch_id) if f not in keep]
    for f in stale:
        f.unlink()
    previous = read_manifest(lake, batch_id) or {"files": []}
    compacted = sorted(
        _day_file_key(lake, p)
        for p in (lake / f for f in previous["files"])
        if p not in keep and not p.exists()
    )
    for (table, month), group in groupby(compacted, key=lambda k: (k[0], _first_of_month(k[1]))):
        if month_file(lake, table, month).exists():
            stale.append(_rewrite_month(lake, table, month, [], {(day, batch) for _, day, batch in group}))
    return stale


def drop_batch(lake: Location, batch_id: str) -> None:
    """Remove a loaded batch from the lake, to replace it by a batch with other content: its day
    files, its rows in month files, then its manifest."""
    for f in batch_files(lake, batch_id):
        f.unlink()
    for table in LAKE_TABLES:
        for path in month_files(lake, table):
            rows = read_parquet(path, columns=[DAY_COLUMN, BATCH_COLUMN])
            days = pc.unique(pc.filter(rows[DAY_COLUMN], pc.equal(rows[BATCH_COLUMN], batch_id))).to_pylist()
            if days:
                _rewrite_month(lake, table, _first_of_month(days[0]), [], {(d, batch_id) for d in days})
    manifest_path(lake, batch_id).unlink(missing_ok=True)
