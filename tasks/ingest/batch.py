"""A batch folder: which contract files it holds, their columns, its day and its content id.

Everything here is a whole-file check: a problem raises `BatchError` naming the file (and the
column), before a single row of the batch is validated or written.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq

from tasks.core.contract import LOAD_ORDER, TABLES
from tasks.ops.alerts import DataQualityRejected

FORMATS: tuple[str, ...] = ("csv", "parquet")
_DAY_FOLDER = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


class BatchError(DataQualityRejected, ValueError):
    """A whole-file problem: the batch cannot be loaded at all (names the file and column). Loading
    raises its data-quality alert first, so the ingest task fails at once, with that one alert."""


@dataclass(frozen=True)
class SourceFile:
    """One contract file of a batch.

    `columns` maps each contract column present in the file to where it is: its 0-based position
    (CSV) or its name (Parquet). Nullable contract columns may be absent; extra columns are ignored.
    """

    table: str
    path: Path
    fmt: Literal["csv", "parquet"]
    columns: dict[str, int | str]
    header: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """A batch folder ready to validate: its files in load order, its day, and its id."""

    path: Path
    day: dt.date | None
    files: tuple[SourceFile, ...]
    batch_id: str


def folder_day(path: Path) -> dt.date | None:
    """The day of a `dt=YYYY-MM-DD` folder, else None."""
    m = _DAY_FOLDER.match(path.name)
    if not m:
        return None
    try:
        return dt.date.fromisoformat(m.group(1))
    except ValueError as e:
        raise BatchError(f"{path}: folder name is not a valid dt=YYYY-MM-DD day") from e


def _utf8_lines(path: Path, lines: Iterable[bytes]) -> Iterator[str]:
    """Decode a file's lines one at a time (a leading byte-order mark dropped), so that reading
    the header never decodes the rows below it."""
    offset = 0
    for line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BatchError(
                f"{path}: the header row is not valid UTF-8 at byte {offset + e.start}; "
                "save the file as UTF-8 (the contract's encoding) and deliver it again"
            ) from e
        yield text.removeprefix("\ufeff") if offset == 0 else text
        offset += len(line)


def _csv_header(path: Path) -> tuple[str, ...]:
    """The header record of a CSV (rows with bytes that are not UTF-8 are quarantined later)."""
    try:
        with path.open("rb") as f:
            header = next(csv.reader(_utf8_lines(path, f)), None)
    except (OSError, csv.Error) as e:
        raise BatchError(f"{path}: unreadable CSV header: {e}; deliver it again as a complete CSV file") from e
    if not header:
        raise BatchError(f"{path}: empty file, a CSV needs a header row")
    return tuple(h.strip() for h in header)


def _parquet_header(path: Path) -> tuple[str, ...]:
    try:
        return tuple(pq.read_schema(path).names)
    except Exception as e:
        raise BatchError(f"{path}: unreadable Parquet file: {e}; deliver it again as a complete Parquet file") from e


def _source_file(table: str, path: Path, fmt: Literal["csv", "parquet"]) -> SourceFile:
    header = _csv_header(path) if fmt == "csv" else _parquet_header(path)
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise BatchError(f"{path}: duplicate column(s) {', '.join(dupes)}; rename or drop the copies")
    contract = TABLES[table]
    missing = [c.name for c in contract.columns if not c.nullable and c.name not in header]
    if missing:
        raise BatchError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"(table {table} needs {', '.join(contract.column_names)})"
        )
    where = {h: (i if fmt == "csv" else h) for i, h in enumerate(header)}
    columns = {c: where[c] for c in contract.column_names if c in where}
    return SourceFile(table=table, path=path, fmt=fmt, columns=columns, header=header)


def _content_id(files: list[SourceFile], day: dt.date | None) -> str:
    h = hashlib.sha256(b"recpipe-batch-v1\n")
    h.update(f"day={day.isoformat() if day else 'dump'}\n".encode())
    for f in files:
        with f.path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{f.table}.{f.fmt}={digest}\n".encode())
    return h.hexdigest()[:16]


def open_batch(path: Path, day: dt.date | None = None) -> Batch:
    """Inspect a batch folder: find its contract files, check their columns, hash its content.

    Hidden files (in-progress writes) are skipped; any other file that is not
    `<table>.csv` / `<table>.parquet` for a contract table is an error.
    """
    path = Path(path)
    if not path.is_dir():
        raise BatchError(f"{path}: not a batch folder")
    day = day or folder_day(path)
    found: dict[str, SourceFile] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        stem, _, ext = entry.name.partition(".")
        if not entry.is_file() or stem not in TABLES or ext not in FORMATS:
            raise BatchError(
                f"{entry}: unknown file in batch folder (expected <table>.csv or <table>.parquet "
                f"for table in {', '.join(LOAD_ORDER)})"
            )
        if stem in found:
            raise BatchError(
                f"{entry}: table {stem} is also in {found[stem].path.name}; remove one (one file per table)"
            )
        found[stem] = _source_file(stem, entry, ext)  # type: ignore[arg-type]
    if not found:
        raise BatchError(f"{path}: no contract files ({', '.join(f'{t}.csv|parquet' for t in LOAD_ORDER)})")
    files = [found[t] for t in LOAD_ORDER if t in found]
    return Batch(path=path, day=day, files=tuple(files), batch_id=_content_id(files, day))
