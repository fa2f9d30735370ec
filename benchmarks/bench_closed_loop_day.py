"""One simulated closed-loop day, every step timed (issue #15 "Performance": at 100,000 users and
20,000 items, <= 5 min per day with the feed step >= 500 feeds/s).

    python benchmarks/bench_closed_loop_day.py --users 100000 --items 20000

A fresh data folder (--data-dir, wiped first) with config/demo.yaml's closed loop at --users and
--items: the organic warm-up (tasks/experiments/loop.run_loop through the day before the first
served day: ingest days, then the whole chain that trains the first models, pools and indexes) is
run and timed as setup. Then the first served day, step by step as the loop runs it
(tasks/experiments/loop.steps_for_day): the ingest DAG's task functions called directly, so the
simulated day is split into simulation and serving (`tasks.experiments.policy.served_feeds`, the
feed step: context load and every user's feed, timed by wrapping it), then the validation into the
lake and the warehouse publication; every other DAG of the day through Airflow in this process
(`run_dag_for_days`, as `recpipe experiment run`). One line per step with its seconds; the logs
go to <data-dir>/bench.log. --funnel-scale s serves every strategy with its quotas and pre-ranking
counts times s (benchmarks/bench_funnel_size.py measures what that costs in true clicks);
--warm-copy DIR keeps the data folder after the warm-up and restores it on later runs, so a change
to the day's steps is measured without the warm-up. No timing asserts; not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import yaml

from tasks.core.config import REPO_ROOT, PlatformConfig, get_config, load_config
from tasks.core.console import logs_to_file
from tasks.experiments import policy
from tasks.experiments.assignment import publish_assignments
from tasks.experiments.loop import SHORT, first_served_day, run_loop, steps_for_day
from tasks.ingest import daily
from tasks.orchestration.local_airflow import DagRunFailed, run_dag_for_days, setup_metadata

TARGET_DAY_S = 300.0
TARGET_FEEDS_PER_S = 500.0


def write_config(data_dir: Path, users: int, items: int, processes: int, funnel_scale: float) -> Path:
    """config/demo.yaml (the closed loop) with its data in `data_dir`, the simulator at the given
    size, the feeds in `processes` worker processes and every strategy's funnel times
    `funnel_scale` (StrategyConfig.scaled)."""
    path = data_dir / "bench.yaml"
    serving: dict[str, Any] = {"processes": processes}
    if funnel_scale != 1:
        strategies = load_config(REPO_ROOT / "config" / "demo.yaml").serving.strategies
        serving["strategies"] = {name: s.scaled(funnel_scale).model_dump(mode="json")
                                 for name, s in strategies.items()}
    path.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "config" / "demo.yaml"),
        "paths": {"data_root": str(data_dir)},
        "simulator": {"users": users, "items": items},
        "serving": serving,
    }))
    return path


def timed_feeds(record: dict[str, float]) -> Callable[[PlatformConfig, dt.date, np.ndarray], pd.DataFrame]:
    """`policy.served_feeds` wrapped to add its seconds and feeds to `record`."""
    served_feeds = policy.served_feeds

    def wrapper(cfg: PlatformConfig, day: dt.date, user_ids: np.ndarray) -> pd.DataFrame:
        t0 = time.perf_counter()
        out = served_feeds(cfg, day, user_ids)
        record["seconds"] += time.perf_counter() - t0
        record["feeds"] += len(user_ids)
        return out

    return wrapper


def served_day(cfg: PlatformConfig, day: dt.date, terminal: TextIO) -> list[tuple[str, float]]:
    """Run the steps of `day` one at a time; (step, seconds) of each, one line per step on `terminal`."""
    feeds = {"seconds": 0.0, "feeds": 0.0}
    policy.served_feeds = timed_feeds(feeds)
    out = []

    def step(name: str, run: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            run()
            note = ""
        except DagRunFailed as e:  # failed by a data-quality gate: the loop records it and goes on
            note = f" (FAILED: {e})"
        seconds = time.perf_counter() - t0
        out.append((name, seconds))
        terminal.write(f"{name:<22} {seconds:8.1f} s{note}\n")

    for s in steps_for_day(cfg, day):
        if s.dag_id != "ingest":
            step(SHORT[s.dag_id], lambda s=s: run_dag_for_days(s.dag_id, [s.day], conf=s.conf))
            continue
        t0 = time.perf_counter()
        daily.land_simulated_day(cfg, day)
        land = time.perf_counter() - t0
        rate = feeds["feeds"] / max(feeds["seconds"], 1e-9)
        out += [("simulate", land - feeds["seconds"]), ("serve (feed step)", feeds["seconds"])]
        terminal.write(f"{'simulate':<22} {land - feeds['seconds']:8.1f} s\n"
                       f"{'serve (feed step)':<22} {feeds['seconds']:8.1f} s: {feeds['feeds']:,.0f} feeds, "
                       f"{rate:,.0f} feeds/s (target {TARGET_FEEDS_PER_S:.0f})\n")
        step("ingest validation", lambda: daily.load_landed_batch(cfg, day))
        step("warehouse + assignments", lambda: (daily.publish_warehouse(cfg), publish_assignments(cfg)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "bench-data" / "closed_loop_day")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="serving.processes of the feed step")
    parser.add_argument("--funnel-scale", type=float, default=1.0,
                        help="every strategy's quotas and pre-ranking counts times this (1: 5,000 -> 500 -> 50)")
    parser.add_argument("--warm-copy", type=Path, default=None,
                        help="a copy of the data folder after the warm-up: made if absent, else restored instead of "
                             "running the warm-up again (same --users, --items and --data-dir)")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    warm = args.warm_copy.resolve() if args.warm_copy else None
    if warm and warm.exists():
        shutil.copytree(warm, data_dir, symlinks=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["RECPIPE_CONFIG"] = str(write_config(data_dir, args.users, args.items, args.processes, args.funnel_scale))
    os.environ["AIRFLOW_HOME"] = str(data_dir / ".airflow")  # before setup_metadata imports airflow
    cfg = get_config()  # as the DAGs read it
    day = first_served_day(cfg)
    print(f"closed-loop day at {args.users:,} users and {args.items:,} items: warm-up "
          f"{cfg.simulator.start_date} .. {day - dt.timedelta(days=1)}, served day {day}; logs in {data_dir / 'bench.log'}")
    with logs_to_file(data_dir / "bench.log") as terminal:
        t0 = time.perf_counter()
        setup_metadata(cfg)
        if warm and warm.exists():
            terminal.write(f"warm-up restored from {warm}\n")
        else:
            run_loop(cfg, day - dt.timedelta(days=1),
                     lambda dag_id, d, conf: run_dag_for_days(dag_id, [d], conf=conf), (DagRunFailed,), terminal)
            terminal.write(f"warm-up (setup, not the day): {time.perf_counter() - t0:,.0f} s\n")
            if warm:
                shutil.copytree(data_dir, warm, symlinks=True)
        steps = served_day(cfg, day, terminal)
    total = sum(seconds for _, seconds in steps)
    print(f"served day {day}: {total:,.1f} s in all; / target {TARGET_DAY_S:.0f} s = {total / TARGET_DAY_S:.2f}x "
          f"({'ok' if total <= TARGET_DAY_S else 'MISSED'})")


if __name__ == "__main__":
    main()
