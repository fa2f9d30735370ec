"""What a smaller funnel buys and costs (issue #15 "Performance": the feed step at >= 500 feeds/s), on
a simulated world with its ground truth.

    python benchmarks/bench_funnel_size.py --config config/playbook-study.yaml --day 2026-01-29 \\
        --strategy baseline --users 1000 --scales 1,0.5,0.25

The artifacts current in the config's data (after `make study`, `make demo` or any closed loop)
serve the feeds of --day (the context of the day before) to --users users active that day before
(a seeded sample). Each scale s runs --strategy with every channel quota (and segment quota) and
the pre-ranking selection's interest and diverse counts times s, the feed length unchanged:
s = 1 is the strategy itself, 5,000 -> 500 -> 50 by default. Per scale, on one thread in blocks of
tasks/serving/blocks.BLOCK_USERS users: feeds/s and its ratio to s = 1 measured in the same run, the
milliseconds per feed of each stage (Feeds.seconds), and the simulator's ground truth of what the
feeds show: the mean true P(click) of the items at the first 6 positions (a simulated user sees
about 6 a day) and the first 20, from the latent state before --day (tasks/simulator/behaviour.py
`affinity`, `click_probability`, without follow or fatigue terms), with the difference to s = 1
and its 95% bootstrap CI over users (paired: the same users). No timing asserts; not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import torch
from threadpoolctl import threadpool_limits

from tasks.core.config import load_config
from tasks.core.eval_metrics import bootstrap_ci
from tasks.serving.blocks import BLOCK_USERS
from tasks.serving.context import load_context
from tasks.serving.funnel import recommend
from tasks.simulator.behaviour import affinity, click_probability
from tasks.simulator.state import latest_state_before

TOP = (6, 20)


def active_users(cfg, day: dt.date, n: int, seed: int) -> np.ndarray:
    """A seeded sample of n users with an event on `day`."""
    events = ds.dataset(cfg.data_root / "lake" / "events", format="parquet", partitioning="hive")
    frame = events.to_table(columns=["user_id", "ts"]).to_pandas()
    users = frame.user_id[pd.to_datetime(frame.ts).dt.date == day].unique()
    if not len(users):
        raise SystemExit(f"no events on {day} in {cfg.data_root / 'lake' / 'events'}")
    return np.sort(np.random.default_rng(seed).choice(users, min(n, len(users)), replace=False)).astype(np.int64)


def true_click(world, rows: pd.DataFrame, users: np.ndarray, top: int) -> np.ndarray:
    """Per user (in `users` order): the mean true P(click) of the items at positions < top."""
    shown = rows[rows.position < top]
    item = shown.item_id.to_numpy(np.int64) - 1  # simulator ids: row = id - 1
    known = item < len(world.items.l2)
    user = shown.user_id.to_numpy(np.int64)[known]
    p = click_probability(affinity(world.users, world.items, user - 1, item[known]),
                          np.zeros(known.sum()), np.zeros(known.sum()), 0.0)
    return pd.Series(p).groupby(user).mean().reindex(users).to_numpy(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--day", type=dt.date.fromisoformat, required=True, help="the served day")
    parser.add_argument("--strategy", default=None, help="default: serving.default_strategy")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--scales", default="1,0.5,0.25")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config(args.config)
    name = args.strategy or cfg.serving.default_strategy
    base = cfg.serving.strategy(name)
    found = latest_state_before(cfg.simulator, cfg.ground_truth_dir, args.day)
    if found is None:
        raise SystemExit(f"no simulator state before {args.day} in {cfg.ground_truth_dir}: simulated data only")
    _, world = found
    torch.set_num_threads(1)
    ctx = load_context(cfg, args.day - dt.timedelta(days=1))
    users = active_users(cfg, args.day - dt.timedelta(days=1), args.users, args.seed)
    print(f"{len(users)} users active on {args.day - dt.timedelta(days=1)}, strategy {name}, one thread, "
          f"blocks of {BLOCK_USERS}")
    recommend(ctx, users[:20], name, base)  # warm-up: lazy loads out of the timing
    results, truth = [], {}
    with threadpool_limits(1):
        for factor in (float(x) for x in args.scales.split(",")):
            s = base.scaled(factor)
            seconds: dict[str, float] = {}
            parts = []
            start = time.perf_counter()
            for lo in range(0, len(users), BLOCK_USERS):
                feeds = recommend(ctx, users[lo:lo + BLOCK_USERS], name, s)
                parts.append(feeds.rows)
                for stage, t in feeds.seconds.items():
                    seconds[stage] = seconds.get(stage, 0.0) + t
            elapsed = time.perf_counter() - start
            rows = pd.concat(parts)
            truth[factor] = {top: true_click(world, rows, users, top) for top in TOP}
            results.append({"scale": factor, "quota": s.total_quota,
                            "ranked": s.preranking.interest + s.preranking.diverse, "feeds/s": len(users) / elapsed,
                            **{f"{stage} ms": 1000 * t / len(users) for stage, t in seconds.items()}})
            print(f"scale {factor:g}: {s.total_quota} candidates -> {results[-1]['ranked']} ranked: "
                  f"{results[-1]['feeds/s']:.1f} feeds/s", flush=True)
    table = pd.DataFrame(results)
    reference = table.scale.iloc[0]
    table.insert(4, "speed-up", table["feeds/s"] / table["feeds/s"].iloc[0])
    for top in TOP:
        base_truth = truth[reference][top]
        table[f"true P(click) top {top}"] = [np.nanmean(truth[f][top]) for f in table.scale]
        cis = []
        for f in table.scale:
            diff = truth[f][top] - base_truth
            ok = ~np.isnan(diff)
            low, high = bootstrap_ci(diff[ok], 1000, 0.05, args.seed) if f != reference else (0.0, 0.0)
            cis.append(f"{np.mean(diff[ok]):+.4f} [{low:+.4f}, {high:+.4f}]")
        table[f"vs scale {reference:g} top {top}"] = cis
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
