"""Benchmark the simulator end to end (simulate + write Parquet) against the I/O floor.

    python benchmarks/bench_simulator.py --users 1000000 --days 3 --out bench-data/sim

Prints events/s, seconds, events and peak RSS of the simulation, then the write-only baseline:
the same days' Parquet tables (contract batches and ground-truth partitions, read back with
the simulator's Arrow types) written again with pyarrow alone and the same writer options, and
the ratio simulate+write / write-only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.config import SimulatorConfig, load_config
from tasks.core.contract import LOAD_ORDER
from tasks.simulator import landing_path, simulate, truth_path
from tasks.simulator.output import TRUTH_TABLES, parquet_options
from tasks.simulator.tables import write_schema


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_only_seconds(out: Path, days: list[dt.date]) -> float:
    """Seconds pyarrow alone takes to write the tables the simulator wrote for `days` (one day in memory)."""
    seconds = 0.0
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for day in days:
            jobs = []
            for name in LOAD_ORDER:
                strings = [f.name for f in write_schema(name) if pa.types.is_dictionary(f.type)]
                table = pq.read_table(landing_path(out / "landing", day, name), read_dictionary=strings)
                jobs.append((table.cast(write_schema(name)), False))
            jobs += [(pq.read_table(truth_path(out / "ground_truth", t, day)), True) for t in TRUTH_TABLES]
            t0 = time.perf_counter()
            for i, (table, arrow_schema) in enumerate(jobs):
                path = Path(tmp) / f"{i}.parquet"
                pq.write_table(table, path, store_schema=arrow_schema, **parquet_options(table))
            seconds += time.perf_counter() - t0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--items", type=int, default=None, help="initial catalogue (default: the config's)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true", help="log each simulated day")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    cfg: SimulatorConfig = load_config().simulator
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = simulate(
        cfg, args.out / "landing", args.out / "ground_truth",
        users=args.users, items=args.items, days=args.days, seed=args.seed,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    peak = _peak_rss_mib()
    write_only = _write_only_seconds(args.out, [d.day for d in summary.days])
    print(f"users={args.users:,} days={args.days} out={args.out}")
    print(f"events:          {summary.events:,}")
    print(f"seconds:         {seconds:.2f}")
    print(f"events/s:        {summary.events / seconds:,.0f}")
    print(f"peak RSS:        {peak:,.0f} MiB")
    print(f"write-only:      {write_only:.2f} s (pyarrow alone, same tables and options)")
    print(f"simulate+write / write-only: {seconds / write_only:.2f}")


if __name__ == "__main__":
    main()
