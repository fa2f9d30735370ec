"""Load batches into the lake: validate every row (tasks.ingest.validate), write valid rows to their
partitions and invalid rows to quarantine (tasks.core.lake), raise a data-quality alert when too much
was quarantined.

Invariant, checked for every table of every batch: valid + quarantined = input rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from tasks.core import lake
from tasks.core.config import PlatformConfig
from tasks.core.console import terminal
from tasks.ingest.batch import Batch, BatchError, folder_day, open_batch
from tasks.ingest.validate import TableCheck, Validator
from tasks.ops.alerts import Alert, raise_alert

log = logging.getLogger(__name__)
EPOCH = dt.date(1970, 1, 1)
Partitions = list[tuple[dt.date, pa.Table]]
WRITE_THREADS = 2  # lake files of a batch written in parallel (pyarrow releases the GIL)


@dataclass(frozen=True)
class TableCounts:
    """Rows of one table (one file) of a batch."""

    file: str
    input: int
    valid: int
    quarantined: dict[str, int]

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


@dataclass
class BatchResult:
    """What loading one batch did: counts per table, the batch id and the lake files written."""

    batch_id: str
    batch_dir: Path
    day: dt.date | None
    tables: dict[str, TableCounts]
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def input_rows(self) -> int:
        return sum(t.input for t in self.tables.values())

    @property
    def valid_rows(self) -> int:
        return sum(t.valid for t in self.tables.values())

    @property
    def quarantined_rows(self) -> int:
        return sum(t.quarantined_total for t in self.tables.values())

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tables.values():
            for reason, n in t.quarantined.items():
                out[reason] = out.get(reason, 0) + n
        return out

    @property
    def quarantined_share(self) -> float:
        return self.quarantined_rows / self.input_rows if self.input_rows else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the ingest DAG returns it as the task's XCom)."""
        return {
            "batch_id": self.batch_id,
            "batch_dir": str(self.batch_dir),
            "day": self.day.isoformat() if self.day else None,
            "input_rows": self.input_rows,
            "valid_rows": self.valid_rows,
            "quarantined_rows": self.quarantined_rows,
            "quarantined_by_reason": self.quarantined_by_reason,
            "tables": {name: asdict(t) for name, t in self.tables.items()},
            "files": self.files,
            "seconds": round(self.seconds, 3),
        }


def _label(path: Path, cfg: PlatformConfig) -> str:
    """How messages name a file: relative to the data root when it is inside it."""
    try:
        return str(path.resolve().relative_to(cfg.data_root.resolve()))
    except ValueError:
        return str(path.resolve())


def _partitions(rows: pa.Table) -> Partitions:
    """Split rows sorted by `_dt` into (day, rows without _dt) runs."""
    out, start = [], 0
    for item in pc.value_counts(rows["_dt"]).to_pylist():
        n = item["counts"]
        out.append((item["values"], rows.slice(start, n).drop_columns(["_dt"])))
        start += n
    return out


def _alert_rejected(cfg: PlatformConfig, batch_dir: Path, error: Exception) -> None:
    raise_alert(
        Alert(
            kind="data_quality",
            severity="critical",
            title=f"batch {batch_dir.name} rejected: {error}",
            source="recpipe.load",
            details={"batch": str(batch_dir), "error": str(error)},
        ),
        cfg,
    )


@dataclass
class _Validated:
    """A validated batch, ready to write: valid partitions and quarantine rows per table."""

    batch: Batch
    checks: dict[str, TableCheck]
    valid: dict[str, Partitions]
    quarantine: dict[str, pa.Table]
    started: float


def _validate(
    batch: Batch, cfg: PlatformConfig, now: dt.datetime, lake_ready: Callable[[], None]
) -> _Validated:
    """Validate every file of the batch. `lake_ready` is called once all files have been read and
    before the lake is: it waits for the previous batch's files to be written."""
    started = time.perf_counter()
    validator = Validator(batch.batch_id, batch.day, now, cfg.lake_dir)
    try:
        for src in batch.files:
            try:
                validator.check_rows(src, _label(src.path, cfg))
            except (duckdb.Error, pa.ArrowException, OSError) as e:
                raise BatchError(
                    f"{src.path}: cannot be read: {e}; deliver it again as a complete {src.fmt} file"
                ) from e
        lake_ready()
        out = _Validated(batch, {}, {}, {}, started)
        for src in batch.files:
            out.checks[src.table] = validator.check_keys(src.table)
        for src in batch.files:
            out.valid[src.table] = validator.valid_partitions(src.table)
            out.quarantine[src.table] = validator.quarantine_rows(src.table)
            _check_invariant(src.path, out.checks[src.table], out.valid[src.table], out.quarantine[src.table])
    finally:
        validator.close()
    return out


def _check_invariant(src_path: Path, check: TableCheck, valid: Partitions, quarantined: pa.Table) -> None:
    """valid + quarantined = input, counted and as written; raises (even under python -O) if not."""
    n_valid, q_total = sum(p.num_rows for _, p in valid), sum(check.quarantined.values())
    if not (
        n_valid == check.valid_rows
        and quarantined.num_rows == q_total
        and n_valid + q_total == check.input_rows
    ):
        raise RuntimeError(
            f"{src_path}: invariant broken: valid {n_valid} (counted {check.valid_rows}) + quarantined "
            f"{quarantined.num_rows} (counted {q_total}) != input {check.input_rows}"
        )


def _quarantine_table(v: _Validated) -> pa.Table:
    """All quarantine rows of the batch, sorted by partition; a dump's rows without a day of their
    own go to the batch's latest valid day (or 1970-01-01 when nothing is valid)."""
    rows = pa.concat_tables(v.quarantine.values())
    if v.batch.day is None:
        fallback = max((d for parts in v.valid.values() for d, _ in parts), default=EPOCH)
        rows = rows.set_column(rows.schema.get_field_index("_dt"), "_dt", pc.fill_null(rows["_dt"], fallback))
    return rows.take(pc.sort_indices(rows, [("_dt", "ascending")]))


def _write_manifest(cfg: PlatformConfig, result: BatchResult, now: dt.datetime) -> None:
    """Write the manifest last; a reload with the same outcome keeps the existing one untouched."""
    content = {k: v for k, v in result.summary().items() if k != "seconds"}
    previous = lake.read_manifest(cfg.lake_dir, result.batch_id)
    if previous and {k: previous.get(k) for k in content} == content:
        return
    lake.write_manifest(cfg.lake_dir, result.batch_id, {**content, "loaded_at": now.isoformat()})


def _alert_if_needed(cfg: PlatformConfig, result: BatchResult) -> None:
    share, threshold = result.quarantined_share, cfg.ingest.quarantine_alert_share
    if share <= threshold:
        return
    raise_alert(
        Alert(
            kind="data_quality",
            severity="warning",
            title=f"{share:.1%} of batch {result.batch_dir.name} quarantined (threshold {threshold:.1%})",
            source="recpipe.load",
            details={
                "batch_id": result.batch_id,
                "batch": str(result.batch_dir),
                "day": result.day.isoformat() if result.day else None,
                "input_rows": result.input_rows,
                "quarantined_rows": result.quarantined_rows,
                "share": round(share, 6),
                "threshold": threshold,
                "by_reason": result.quarantined_by_reason,
                "by_table": {t: c.quarantined for t, c in result.tables.items() if c.quarantined},
            },
        ),
        cfg,
    )


def _write(v: _Validated, cfg: PlatformConfig, now: dt.datetime) -> BatchResult:
    """Write the batch's lake files, drop its stale ones, then its manifest; log and alert."""
    batch = v.batch
    jobs = [(table, day, part) for table, parts in v.valid.items() for day, part in parts]
    jobs += [(lake.QUARANTINE, day, part) for day, part in _partitions(_quarantine_table(v))]
    written = [lake.batch_file(cfg.lake_dir, table, day, batch.batch_id) for table, day, _ in jobs]
    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="lake-file") as pool:
        for done in [
            pool.submit(lake.write_parquet, part, path, lake.schema_of(table))
            for (table, _, part), path in zip(jobs, written, strict=True)
        ]:
            done.result()
    lake.remove_stale(cfg.lake_dir, batch.batch_id, written)
    result = BatchResult(
        batch_id=batch.batch_id,
        batch_dir=batch.path,
        day=batch.day,
        tables={
            t: TableCounts(
                file=c.source, input=c.input_rows, valid=c.valid_rows, quarantined=dict(c.quarantined)
            )
            for t, c in v.checks.items()
        },
        files=[str(p.relative_to(cfg.lake_dir)) for p in written],
    )
    _write_manifest(cfg, result, now)
    result.seconds = time.perf_counter() - v.started
    log.info(
        "loaded batch %s (%s): %d rows in, %d valid, %d quarantined %s; %.2f s, %.0f rows/s",
        batch.batch_id,
        batch.path,
        result.input_rows,
        result.valid_rows,
        result.quarantined_rows,
        result.quarantined_by_reason or "",
        result.seconds,
        result.input_rows / max(result.seconds, 1e-9),
    )
    _alert_if_needed(cfg, result)
    return result


def _load(
    batch_dir: Path,
    cfg: PlatformConfig,
    day: dt.date | None,
    now: dt.datetime | None,
    writer: ThreadPoolExecutor,
    previous: Future | None,
) -> Future:
    """Validate a batch here and hand its writing to `writer` (one thread: batches land in order).

    The files are read while the previous batch is still being written; its writing must finish
    before this batch reads the lake.
    """
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def lake_ready() -> None:
        if previous is not None:
            previous.result()

    try:
        batch = open_batch(Path(batch_dir), day)
        validated = _validate(batch, cfg, now, lake_ready)
    except BatchError as e:
        lake_ready()
        _alert_rejected(cfg, Path(batch_dir), e)
        raise
    return writer.submit(_write, validated, cfg, now)


def load_batch(
    batch_dir: Path, cfg: PlatformConfig, *, day: dt.date | None = None, now: dt.datetime | None = None
) -> BatchResult:
    """Validate one batch folder into the lake: valid rows to their partitions, the rest to quarantine.

    A daily batch (folder `dt=YYYY-MM-DD`, or `day` given) goes to that day's partitions; a dump is
    partitioned by each row's own timestamp. `now` (naive UTC, default: the current time) is the
    load time that `ts_in_future` compares against. A whole-file problem raises BatchError (after a
    critical alert) and writes nothing. Loading the same batch again rewrites the same files.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as writer:
        return _load(batch_dir, cfg, day, now, writer, None).result()


def load_dir(
    path: Path, cfg: PlatformConfig, *, day: dt.date | None = None, now: dt.datetime | None = None
) -> list[BatchResult]:
    """Load a batch folder, or every `dt=YYYY-MM-DD` batch folder inside `path`, oldest first.

    Batch n+1 is read and checked while batch n is being written (it waits before reading the lake).
    """
    path = Path(path)
    days = (
        sorted((d, p) for p in path.iterdir() if p.is_dir() and (d := folder_day(p))) if path.is_dir() else []
    )
    if not days:
        return [load_batch(path, cfg, day=day, now=now)]
    if day is not None:
        raise BatchError(f"{path}: holds dt=* batch folders; --day applies to a single batch folder")
    futures: list[Future] = []
    bar = tqdm(total=len(days), desc="load", unit="batch", file=terminal(), mininterval=1.0, disable=len(days) < 2)
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as writer:
        for _, batch_dir in days:
            futures.append(_load(batch_dir, cfg, None, now, writer, futures[-1] if futures else None))
            futures[-1].add_done_callback(lambda _: bar.update())
        return [f.result() for f in futures]
