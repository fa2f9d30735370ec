"""The simulator's entry points: `simulate` (all days in one go) and `simulate_day` (the daily mode).

Both produce byte-identical files for the same config (and the same `satisfaction_shift`, the
planted effect of day.py): a day depends only on the seed and the state left by the previous day,
which `simulate_day` reloads from the last snapshot (or rebuilds by replaying from the start date
when it is missing).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks.core.config import SimulatorConfig
from tasks.simulator.day import DayOutput, SatisfactionShift, step
from tasks.simulator.exposure import ExposurePolicy, get_policy
from tasks.simulator.output import write_day
from tasks.simulator.state import latest_state_before, save_state
from tasks.simulator.world import Taxonomy, initial_world

log = logging.getLogger("recpipe.simulator")


@dataclass(frozen=True)
class DaySummary:
    """Rows written per contract table for one day, its DAU and the seconds it took."""

    day: dt.date
    users: int
    items: int
    follows: int
    events: int
    dau: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class SimulationSummary:
    """A whole run: the per-day summaries and totals per table."""

    days: tuple[DaySummary, ...]
    seconds: float

    @property
    def users(self) -> int:
        return sum(d.users for d in self.days)

    @property
    def items(self) -> int:
        return sum(d.items for d in self.days)

    @property
    def follows(self) -> int:
        return sum(d.follows for d in self.days)

    @property
    def events(self) -> int:
        return sum(d.events for d in self.days)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{len(self.days)} days: +{self.users:,} users, +{self.items:,} items, {self.follows:,} follows, "
            f"{self.events:,} events in {self.seconds:.1f} s ({self.events_per_s:,.0f} events/s)"
        )


def _summary(out: DayOutput, seconds: float, n_users: int) -> DaySummary:
    rows = (out.tables[t].num_rows for t in ("users", "items", "follows", "events"))
    s = DaySummary(out.day, *rows, out.dau, seconds)
    log.info(
        "%s: +%d users, +%d items, %d follows, %d events, DAU %d (%.1f%%), %.2f s, %.0f events/s",
        s.day, s.users, s.items, s.follows, s.events, s.dau, 100 * s.dau / n_users, s.seconds, s.events_per_s,
    )  # fmt: skip
    return s


def with_overrides(cfg: SimulatorConfig, **overrides: object) -> SimulatorConfig:
    """`cfg` with the non-None overrides applied (validated like the config file)."""
    return SimulatorConfig.model_validate(
        {**cfg.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    )


def simulate(
    cfg: SimulatorConfig,
    landing_dir: Path,
    ground_truth_dir: Path,
    *,
    users: int | None = None,
    items: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    start_date: dt.date | None = None,
    satisfaction_shift: SatisfactionShift | None = None,
) -> SimulationSummary:
    """Simulate every day from the start date, day by day, writing each day's batch and truth
    (with the planted satisfaction shift, if any)."""
    cfg = with_overrides(cfg, users=users, items=items, days=days, seed=seed, start_date=start_date)
    policy = get_policy(cfg.exposure_policy)
    t0 = time.perf_counter()
    tax = Taxonomy.build(cfg)
    world = initial_world(cfg, tax)
    summaries = []
    # A writer thread writes day d (pyarrow releases the GIL) while day d+1 is simulated;
    # at most one day waits to be written.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[None] | None = None
        for i in range(cfg.days):
            day = cfg.start_date + dt.timedelta(days=i)
            t_day = time.perf_counter()
            out = step(world, cfg, tax, day, policy, satisfaction_shift)
            save_state(world, cfg, ground_truth_dir, day)
            if pending is not None:
                pending.result()
            pending = writer.submit(write_day, out, landing_dir, ground_truth_dir)
            summaries.append(_summary(out, time.perf_counter() - t_day, len(world.users)))
        if pending is not None:
            pending.result()
    return SimulationSummary(tuple(summaries), time.perf_counter() - t0)


def simulate_day(
    cfg: SimulatorConfig,
    landing_dir: Path,
    ground_truth_dir: Path,
    day: dt.date,
    satisfaction_shift: SatisfactionShift | None = None,
    policy: ExposurePolicy | None = None,
) -> DaySummary:
    """Simulate one day from the persisted state of the day before (replayed if missing, with the
    same satisfaction shift and policy). `policy` overrides `cfg.exposure_policy`."""
    if day < cfg.start_date:
        raise ValueError(f"{day} is before the simulator's start date {cfg.start_date}")
    policy = policy or get_policy(cfg.exposure_policy)
    t0 = time.perf_counter()
    tax = Taxonomy.build(cfg)
    found = latest_state_before(cfg, ground_truth_dir, day)
    if found is None:
        resume, world = cfg.start_date, initial_world(cfg, tax)
    else:
        resume, world = found[0] + dt.timedelta(days=1), found[1]
    if resume < day:
        log.info("replaying %s .. %s to rebuild the state before %s", resume, day - dt.timedelta(days=1), day)
    for i in range((day - resume).days):  # replayed days rewrite their ground truth, not their batch
        write_day(
            step(world, cfg, tax, resume + dt.timedelta(days=i), policy, satisfaction_shift), None, ground_truth_dir
        )
    out = step(world, cfg, tax, day, policy, satisfaction_shift)
    write_day(out, landing_dir, ground_truth_dir)
    save_state(world, cfg, ground_truth_dir, day)
    return _summary(out, time.perf_counter() - t0, len(world.users))
