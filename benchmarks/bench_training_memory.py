"""Peak memory of the read + train step of the two-tower, the full ranker and the pre-ranker: whole
tables (one chunk, what training did before it streamed) next to streamed chunks, on N and
scale x N simulated days of the same users (or N and scale x N users over the same days).

    python benchmarks/bench_training_memory.py --out /tmp/bench-memory --users 20000 --days 4 --scale 2
    python benchmarks/bench_training_memory.py --out /tmp/bench-memory --users 10000 --days 4 --scale 2 --grow users

Simulates and loads each size once under --out (reused on a re-run), then trains every
(model, size, mode) in a fresh process: a cold start over all the days, one epoch, one torch
thread; the pre-ranker label-only. Reports per run the examples, the seconds and the peak resident
memory of the `train` call above the process's memory before it (the kernel's high-water mark,
reset first; `measure`; one-time lazy imports done before), then the ratios whole / streamed and
scale x N / N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import yaml

from tasks.core.config import DEFAULT_CONFIG, PlatformConfig, load_config

T = TypeVar("T")
MODELS = ("two_tower", "full_ranking", "preranking")
WHOLE = 1 << 40  # read_batch_rows above any table: one chunk


def rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(fn(), seconds, peak resident MB during the call above the resident MB before it). The
    peak is the kernel's high-water mark, reset before the call (Linux /proc/self/clear_refs); where
    it cannot be reset, getrusage's lifetime maximum."""
    before = rss_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result, seconds, peak - before


def platform(out: Path, users: int, days: int, seed: int) -> Path:
    """The config of `days` simulated days of `users` users under out/, loaded with their ranking
    exposures (simulated once; reused when done before)."""
    from tasks.core.dbt_runner import run_dbt
    from tasks.core.warehouse import refresh_views
    from tasks.ingest.load import load_dir
    from tasks.ranking.data import build_exposures
    from tasks.simulator import simulate

    root = out / f"users{users}-days{days}-seed{seed}"
    path, done = root / "recpipe.yaml", root / "loaded"
    if done.exists():
        return path
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["paths"]["data_root"] = str(root / "data")
    raw["simulator"].update({"users": users, "days": days, "seed": seed})
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    started = time.perf_counter()
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["run", "--select", "path:models/staging"])
    build_exposures(cfg, cfg.simulator.start_date, cfg.simulator.start_date + dt.timedelta(days=days - 1))
    done.touch()
    print(f"simulated and loaded {days} days of {users:,} users in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def variant(cfg: PlatformConfig, model: str, rows: int, artifacts: Path) -> PlatformConfig:
    """A cold start of `model` over every simulated day, one epoch, chunks of `rows` rows."""
    days = cfg.simulator.days
    tt = cfg.retrieval.two_tower.model_copy(update={"warm_start": False, "first_epochs": 1})
    fr = cfg.ranking.full.model_copy(update={"warm_start": False, "first_epochs": 1, "first_window_days": days})
    pr = cfg.ranking.preranking.model_copy(update={"warm_start": False, "first_epochs": 1})
    return cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"artifacts": str(artifacts / f"{model}-{rows}")}),
        "retrieval": cfg.retrieval.model_copy(update={"two_tower": tt, "train_window_days": days}),
        "ranking": cfg.ranking.model_copy(update={"full": fr, "preranking": pr}),
        "training": cfg.training.model_copy(update={"read_batch_rows": rows, "processes": 1}),
    })


def child(config: Path, model: str, rows: int, artifacts: Path) -> dict[str, float]:
    """Train `model` once in this process; its measurements."""
    from tasks.ranking import full, pre
    from tasks.retrieval import two_tower

    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not the step's memory
    cfg = variant(load_config(config), model, rows, artifacts)
    last = cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.days - 1)
    if model == "two_tower":
        version, seconds, peak = measure(lambda: two_tower.train(cfg, last))
    elif model == "full_ranking":
        version, seconds, peak = measure(lambda: full.train(cfg, last))
    else:
        version, seconds, peak = measure(lambda: pre.train(cfg, last, None, first=cfg.simulator.start_date))
    return {"examples": version.meta["examples"], "seconds": seconds, "peak_mb": peak,
            "seconds_per_1k_examples": 1000 * seconds / version.meta["examples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="simulations and artifacts (reused)")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=8, help="N")
    parser.add_argument("--scale", type=int, default=2, help="the larger size: scale x N days (or users)")
    parser.add_argument("--grow", choices=("days", "users"), default="days", help="what --scale multiplies")
    parser.add_argument("--stream-rows", type=int, default=4096, help="read_batch_rows of the streamed runs")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seed", type=int, default=42, help="the simulation's")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "MODEL", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, model, rows = args.child
        print(json.dumps(child(Path(config), model, int(rows), args.out / "artifacts")))
        return
    big = args.scale if args.grow == "users" else 1, args.scale if args.grow == "days" else 1
    sizes = ((args.users, args.days), (big[0] * args.users, big[1] * args.days))
    configs = {size: platform(args.out, *size, args.seed) for size in sizes}
    modes = {"whole": WHOLE, "streamed": args.stream_rows}
    results: dict[tuple[str, tuple[int, int], str], dict[str, float]] = {}
    print(f"{'model':<13} {'users':>7} {'days':>4} {'mode':<9} {'examples':>9} {'seconds':>8} {'s/1k ex':>8} "
          f"{'peak MB':>8}")
    for model in args.models:
        for size in sizes:
            for mode, rows in modes.items():
                run = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--child",
                                      str(configs[size]), model, str(rows)], capture_output=True, text=True, check=False)
                if run.returncode:
                    sys.exit(f"{model} {size} {mode}: failed\n{run.stderr[-3000:]}")
                r = results[model, size, mode] = json.loads(run.stdout.strip().splitlines()[-1])
                print(f"{model:<13} {size[0]:>7,} {size[1]:>4} {mode:<9} {r['examples']:>9,} {r['seconds']:>8.1f} "
                      f"{r['seconds_per_1k_examples']:>8.3f} {r['peak_mb']:>8.1f}", flush=True)
    print(f"\npeak MB ratios (streamed: chunks of {args.stream_rows:,} rows; whole: one chunk):")
    for model in args.models:
        whole = [results[model, size, "whole"]["peak_mb"] for size in sizes]
        streamed = [results[model, size, "streamed"]["peak_mb"] for size in sizes]
        print(f"  {model:<13} whole/streamed {whole[0] / streamed[0]:.1f} (N), {whole[1] / streamed[1]:.1f} "
              f"({args.scale}N {args.grow}); {args.scale}N/N: whole {whole[1] / whole[0]:.2f}, "
              f"streamed {streamed[1] / streamed[0]:.2f}")


if __name__ == "__main__":
    main()
