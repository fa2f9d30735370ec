"""The Parquet lake: where validated and quarantined rows live, and how files get there.

Layout (under `cfg.lake_dir`):

    <table>/dt=YYYY-MM-DD/batch-<batch_id>.parquet       valid rows, the contract schema
    quarantine/dt=YYYY-MM-DD/batch-<batch_id>.parquet    rejected rows, QUARANTINE_SCHEMA
    _batches/<batch_id>.json                             the batch manifest, written last

A batch id is a content hash of the batch, so loading a batch again rewrites the same paths with
the same bytes. Every file is written to a hidden temporary name and then `os.replace`d.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.atomic import atomic_write
from tasks.core.contract import TABLES

QUARANTINE = "quarantine"
MANIFESTS = "_batches"

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


def partition_dir(lake: Path, table: str, day: dt.date) -> Path:
    """The hive partition folder of `table` for `day`."""
    return lake / table / f"dt={day.isoformat()}"


def batch_file(lake: Path, table: str, day: dt.date, batch_id: str) -> Path:
    """The file one batch writes into one partition."""
    return partition_dir(lake, table, day) / f"batch-{batch_id}.parquet"


def manifest_path(lake: Path, batch_id: str) -> Path:
    """Where the manifest of a loaded batch lives."""
    return lake / MANIFESTS / f"{batch_id}.json"


def write_parquet(data: pa.Table, path: Path, schema: pa.Schema) -> None:
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


def write_manifest(lake: Path, batch_id: str, manifest: dict[str, Any]) -> Path:
    """Write the batch manifest atomically; it marks the batch as completely loaded."""
    path = manifest_path(lake, batch_id)
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def read_manifest(lake: Path, batch_id: str) -> dict[str, Any] | None:
    """The manifest of a loaded batch, or None if it was never (completely) loaded."""
    path = manifest_path(lake, batch_id)
    return json.loads(path.read_text()) if path.exists() else None


def table_files(
    lake: Path, table: str, days: Iterable[dt.date] | None = None, exclude_batch: str | None = None
) -> list[Path]:
    """The lake files of `table` (all partitions, or only `days`), optionally without one batch's."""
    if days is None:
        files = (lake / table).glob("dt=*/batch-*.parquet")
    else:
        files = (f for d in days for f in partition_dir(lake, table, d).glob("batch-*.parquet"))
    skip = f"batch-{exclude_batch}.parquet"
    return sorted(f for f in files if f.name != skip)


def batch_files(lake: Path, batch_id: str) -> list[Path]:
    """Every data and quarantine file a batch has in the lake."""
    return sorted(lake.glob(f"*/dt=*/batch-{batch_id}.parquet"))


def remove_stale(lake: Path, batch_id: str, keep: Iterable[Path]) -> list[Path]:
    """Delete the batch's files that a reload did not rewrite (e.g. rows now quarantined)."""
    keep = {Path(p) for p in keep}
    stale = [f for f in batch_files(lake, batch_id) if f not in keep]
    for f in stale:
        f.unlink()
    return stale
