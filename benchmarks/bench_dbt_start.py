"""Benchmark what a dbt invocation costs before its first node: one night's `run_dbt` calls, each
for its own day, with dbt's saved parse state kept from run to run (the run's window reaches dbt in
the environment, tasks/core/dbt_runner.py `run_window`) against the same calls with partial parsing
off (DBT_PARTIAL_PARSE=false: the whole project parsed every time, as when the window was a var).

    python benchmarks/bench_dbt_start.py --data-dir bench-data/dbt_start

Simulates a small world (--users, --days; reused when the folder holds it), builds the marts once,
then per mode --runs invocations of `dbt run` of the KOL features (selector kol, one small model),
each for the next day. Prints each mode's median seconds per invocation (dbt's own node time
apart), and the ratio baseline / kept state.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _prepare(data_dir: Path, users: int, days: int) -> None:
    """Simulate and load the world, then one full dbt build (every model exists before the runs)."""
    from tasks.core.config import load_config
    from tasks.core.dbt_runner import run_dbt
    from tasks.core.warehouse import refresh_views
    from tasks.ingest.load import load_dir
    from tasks.simulator.run import simulate

    cfg = load_config()
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir, users=users, days=days)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["build"])
    (data_dir / "bench-dbt-start.json").write_text(json.dumps({"users": users, "days": days}))


def _invocations(runs: int, days: int, partial_parse: bool) -> list[tuple[float, float]]:
    """(seconds, dbt's node seconds) of `runs` invocations, each for the next day (cycling)."""
    from tasks.core.config import load_config
    from tasks.core.dbt_runner import run_dbt

    cfg = load_config()
    os.environ["DBT_PARTIAL_PARSE"] = "true" if partial_parse else "false"
    out = []
    for i in range(runs):
        day = (cfg.simulator.start_date + dt.timedelta(days=i % days)).isoformat()
        t0 = time.perf_counter()
        result = run_dbt(cfg, ["run", "--quiet", "--selector", "kol"], ds=day, ds_from=day)
        out.append((time.perf_counter() - t0, result.elapsed_time))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=int, default=5)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--data-dir", type=Path, required=True, help="data root (lake, warehouse); reused if it matches")
    args = p.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["RECPIPE_DATA_DIR"] = str(args.data_dir.resolve())
    meta = args.data_dir / "bench-dbt-start.json"
    if not meta.exists() or json.loads(meta.read_text()) != {"users": args.users, "days": args.days}:
        _prepare(args.data_dir, args.users, args.days)

    import dbt.cli.main  # noqa: F401  (imported before timing: the first call would pay it)

    results = {}
    for name, partial in (("kept parse state", True), ("baseline: full parse", False)):
        _invocations(1, args.days, partial)  # warm: the first call may parse in full
        timed = _invocations(args.runs, args.days, partial)
        seconds = statistics.median(t for t, _ in timed)
        nodes = statistics.median(n for _, n in timed)
        results[name] = seconds
        print(f"{name:22s} {seconds:6.2f} s per invocation (median of {args.runs}; dbt's run {nodes:.2f} s)",
              flush=True)
    print(f"ratio baseline / kept state: {results['baseline: full parse'] / results['kept parse state']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
