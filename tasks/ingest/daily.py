"""Task bodies of the ingest DAG: land a day's batch, load it into the lake, publish the views."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from tasks.core.config import PlatformConfig
from tasks.core.contract import LOAD_ORDER
from tasks.core.warehouse import connect, refresh_views
from tasks.experiments.loop import first_served_day, is_closed_loop
from tasks.ingest.load import load_batch
from tasks.simulator import simulate_day
from tasks.simulator.state import latest_state_before

log = logging.getLogger(__name__)


def batch_dir(cfg: PlatformConfig, day: dt.date) -> Path:
    """The landing folder of one day's batch."""
    return cfg.landing_dir / f"dt={day.isoformat()}"


def batch_landed(cfg: PlatformConfig, day: dt.date) -> bool:
    """True once the day's batch folder holds at least one contract file."""
    folder = batch_dir(cfg, day)
    return folder.is_dir() and any(
        (folder / f"{t}.{ext}").exists() for t in LOAD_ORDER for ext in ("csv", "parquet")
    )


def land_simulated_day(cfg: PlatformConfig, day: dt.date) -> str:
    """Simulator mode: write the day's batch into the landing folder (idempotent per seed and, in
    the closed loop, per the artifacts current at the start of the day)."""
    from tasks.experiments.policy import planted_shift, policy_for_day  # lazy: torch, faiss out of DAG parsing

    found = latest_state_before(cfg.simulator, cfg.ground_truth_dir, day)
    yesterday = day - dt.timedelta(days=1)
    if is_closed_loop(cfg) and yesterday >= first_served_day(cfg) and (found is None or found[0] < yesterday):
        raise RuntimeError(f"no simulator state of {yesterday} under {cfg.ground_truth_dir}: days served by the "
                           "recommendation path cannot be replayed; run the closed loop day by day from the last "
                           "simulated day")
    summary = simulate_day(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir, day,
                           policy=policy_for_day(cfg, day), satisfaction_shift=planted_shift(cfg))
    log.info("simulated %s: %s", day, summary)
    return str(batch_dir(cfg, day))


def load_landed_batch(cfg: PlatformConfig, day: dt.date) -> dict[str, Any]:
    """Validate the day's batch and write valid rows to the lake, invalid ones to quarantine."""
    result = load_batch(batch_dir(cfg, day), cfg, day=day)
    return result.summary()


def publish_warehouse(cfg: PlatformConfig) -> dict[str, int]:
    """Refresh the warehouse's raw views over the lake; return row counts per raw table."""
    refresh_views(cfg)
    with connect(cfg, read_only=True) as con:
        return {
            t: con.execute(f"select count(*) from raw.{t}").fetchone()[0]
            for t in (*LOAD_ORDER, "quarantine")
        }
