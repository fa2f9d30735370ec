"""Loader throughput: validate every dt=* daily Parquet batch of a landing folder into a fresh lake.

Prints validated rows/s, seconds, rows and peak RSS, and the ratio against a baseline measured in
the same run on the same files: DuckDB copying them Parquet -> Parquet with no validation (the
I/O floor). Not a test; `make bench` runs it after the simulator benchmark.

    python benchmarks/bench_loader.py --landing bench-data/sim/landing --data-dir bench-data/load
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import duckdb


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _baseline(landing: Path, out: Path) -> tuple[int, float, float]:
    """DuckDB copies every batch file to Parquet, unvalidated: rows, seconds and CPU seconds."""
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": os.cpu_count() or 1})
    rows, started, cpu = 0, time.perf_counter(), _cpu_seconds()
    for i, f in enumerate(sorted(landing.glob("dt=*/*.parquet"))):
        con.execute(
            "COPY (SELECT * FROM read_parquet($src)) TO $dst (FORMAT parquet)",
            {"src": str(f), "dst": str(out / f"{i}.parquet")},
        )
        rows += con.execute(
            "SELECT count(*) FROM read_parquet($p)", {"p": str(out / f"{i}.parquet")}
        ).fetchall()[0][0]
    con.close()
    return rows, time.perf_counter() - started, _cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--landing", type=Path, required=True, help="folder of dt=YYYY-MM-DD Parquet batches")
    p.add_argument("--data-dir", type=Path, required=True, help="scratch data root (its lake is replaced)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not any(args.landing.glob("dt=*/*.parquet")):
        print(f"no dt=*/*.parquet batches under {args.landing}", file=sys.stderr)
        return 2

    shutil.rmtree(args.data_dir, ignore_errors=True)
    os.environ["RECPIPE_DATA_DIR"] = str(args.data_dir.resolve())
    from tasks.core.config import load_config
    from tasks.ingest.load import load_dir

    cfg = load_config()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    results = load_dir(args.landing, cfg)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    rows = sum(r.input_rows for r in results)
    quarantined = sum(r.quarantined_rows for r in results)
    rss = _peak_rss_mib()

    base_rows, base_seconds, base_cpu = _baseline(args.landing, args.data_dir / "baseline")
    assert base_rows == rows, (base_rows, rows)
    rate, base_rate = rows / seconds, base_rows / base_seconds
    print(
        f"loader:   {rows:,} rows ({quarantined:,} quarantined) in {len(results)} batches, "
        f"{seconds:.2f} s ({cpu:.2f} s CPU), {rate / 1e6:.2f} M validated rows/s, peak RSS {rss:,.0f} MiB"
    )
    print(
        f"baseline: DuckDB Parquet->Parquet copy, no validation: {base_seconds:.2f} s "
        f"({base_cpu:.2f} s CPU), {base_rate / 1e6:.2f} M rows/s"
    )
    print(
        f"ratio:    loader / baseline throughput = {rate / base_rate:.2f}, CPU per row {cpu / base_cpu:.2f}x "
        f"(target: >= 2.0 M rows/s "
        f"-> {'met' if rate >= 2e6 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
