"""Benchmark the dbt metric marts: full build and one daily incremental run against a hand-written query.

    python benchmarks/bench_metrics.py --users 1000000 --days 30 --data-dir bench-data/metrics

Simulates the data and loads it into a lake under --data-dir (in a child process, so that its
memory does not count below; reused when the folder already holds the same users and days), then,
in this process: the full `dbt build` of the marts (models, data tests, unit tests), one daily
incremental `dbt build` (ds = the last day), and a single hand-written DuckDB query computing DAU
and LT7 per day on the same data. Prints seconds, the ratio full build / hand-written query
(target <= 1.5), the incremental seconds (target <= 60) and the peak RSS (target <= 8 GiB), and
where each build's time went: importing dbt (the first build pays it), parsing the project and
setting up, each model, the data tests and the unit tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from tasks.core.config import PlatformConfig

HAND_WRITTEN = """
with user_days as (select distinct user_id, dt as day from raw.events),
windows as (
    select day, count(*) over (
        partition by user_id order by day range between current row and interval 6 day following
    ) as lt7
    from user_days
)
select day, count(*) as dau, avg(lt7) as lt7 from windows group by day order by day
"""


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _prepare(data_dir: Path, users: int, days: int) -> None:
    """Simulate `days` days of `users` users and load them into the lake (child process)."""
    from tasks.core.config import load_config
    from tasks.core.warehouse import refresh_views
    from tasks.ingest.load import load_dir
    from tasks.simulator import simulate

    cfg = load_config()
    t0 = time.perf_counter()
    summary = simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir, users=users, days=days)
    t1 = time.perf_counter()
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    print(f"prepared: {summary.events:,} events simulated in {t1 - t0:.1f} s, loaded in {time.perf_counter() - t1:.1f} s")
    (data_dir / "bench-metrics.json").write_text(json.dumps({"users": users, "days": days, "events": summary.events}))


def _hand_written(warehouse: Path) -> float:
    """Seconds of the hand-written DAU + LT7 query (best of two: the first may read cold files)."""
    best = float("inf")
    for _ in range(2):
        with duckdb.connect(str(warehouse), read_only=True) as con:
            t0 = time.perf_counter()
            con.sql(HAND_WRITTEN).fetchall()
            best = min(best, time.perf_counter() - t0)
    return best


def _build(cfg: PlatformConfig, ds: str | None = None) -> tuple[float, float, Any]:
    """One `dbt build` (dbt/selectors.yml's default: the metric marts, what they are built from,
    and those nodes' data and unit tests; full without ds), timed end to end: (seconds, of which
    importing dbt, dbt's result)."""
    from tasks.core.dbt_runner import run_dbt

    t0 = time.perf_counter()
    import dbt.cli.main  # noqa: F401  (imported by run_dbt anyway; timed apart, the first build pays it)

    imported = time.perf_counter()
    result = run_dbt(cfg, ["build"], ds=ds)
    end = time.perf_counter()
    return end - t0, imported - t0, result


def _phases(seconds: float, import_s: float, result: Any) -> str:
    """Where a build's time went: dbt import, parse and setup (the rest before and after the
    nodes), the nodes' run (models, data tests, unit tests: summed per node, so with several dbt
    threads they may add up to more than the run), and the seconds of each model."""
    by_kind: dict[str, list[float]] = {}
    for r in result.results:
        by_kind.setdefault(str(r.node.resource_type), []).append(r.execution_time)
    run_s = result.elapsed_time
    kinds = ", ".join(f"{kind}s {sum(t):.2f} s ({len(t)})" for kind, t in sorted(by_kind.items()))
    models = ", ".join(
        f"{r.node.name} {r.execution_time:.2f}" for r in result.results if r.node.resource_type == "model"
    )
    return (
        f"    dbt import {import_s:.2f} s, parse and setup {seconds - import_s - run_s:.2f} s, "
        f"run {run_s:.2f} s: {kinds}\n    models (s): {models}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--data-dir", type=Path, required=True, help="data root (lake, warehouse); reused if it matches")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["RECPIPE_DATA_DIR"] = str(args.data_dir.resolve())
    if args.prepare:
        _prepare(args.data_dir, args.users, args.days)
        return 0

    meta = args.data_dir / "bench-metrics.json"
    wanted = {"users": args.users, "days": args.days}
    if not meta.exists() or {k: json.loads(meta.read_text()).get(k) for k in wanted} != wanted:
        subprocess.run([sys.executable, __file__, "--prepare", *sys.argv[1:]], check=True)
    events = json.loads(meta.read_text())["events"]

    from tasks.core.config import load_config

    cfg = load_config()
    hand = _hand_written(cfg.warehouse_path)
    full_s, full_import_s, full = _build(cfg)
    last_day = cfg.simulator.start_date + dt.timedelta(days=args.days - 1)
    daily_s, daily_import_s, daily = _build(cfg, ds=last_day.isoformat())
    hand = min(hand, _hand_written(cfg.warehouse_path))
    rss = _peak_rss_mib(resource.RUSAGE_SELF)
    prep_rss = _peak_rss_mib(resource.RUSAGE_CHILDREN)

    print(f"users={args.users:,} days={args.days} events={events:,} data={args.data_dir}")
    print(f"hand-written DAU+LT7 query:  {hand:8.2f} s")
    print(f"full dbt build:              {full_s:8.2f} s")
    print(_phases(full_s, full_import_s, full))
    print(f"ratio full build / query:    {full_s / hand:8.2f}   (target <= 1.5: {'met' if full_s <= 1.5 * hand else 'NOT met'})")
    print(f"daily build, ds={last_day}: {daily_s:6.2f} s  (target <= 60: {'met' if daily_s <= 60 else 'NOT met'})")
    print(_phases(daily_s, daily_import_s, daily))
    print(f"peak RSS dbt + query:        {rss:8,.0f} MiB (target <= 8192: {'met' if rss <= 8192 else 'NOT met'})"
          + (f"; data preparation (child): {prep_rss:,.0f} MiB" if prep_rss else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
