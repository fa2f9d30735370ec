"""The closed loop, one simulated day at a time through the real DAGs (docs/METHODS.md "Closed loop").

A day is a chain of DAG runs: ingest (the simulator serves the day from the artifacts current at its
start, then the batch is validated into the lake) -> daily_metrics -> content_pools -> kol_scoring ->
implicit_follows -> nightly_training -> ann_refresh: the artifacts the next day is served from. The
organic warm-up days run ingest only; the last of them also runs the rest of the chain (daily_metrics
over the whole warm-up), so the first served day has models, pools and indexes.

Progress is a JSON file under the data root: every finished (day, DAG) step. A run resumes at the
first unfinished step, so a crash at any point neither repeats nor skips a day: every DAG run is
idempotent for its day (a re-simulated day is the same batch: same seed, same artifacts, as nothing
downstream of it has run). A DAG run failed by a data-quality gate (a rejected model or pool) is
recorded and the loop goes on: its alert has been raised and the previous version stays current.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tasks.core.atomic import atomic_write
from tasks.core.config import PlatformConfig

CLOSED_LOOP = "recpipe"  # simulator.exposure_policy of the closed loop
CHAIN = ("ingest", "daily_metrics", "content_pools", "kol_scoring", "implicit_follows", "nightly_training",
         "ann_refresh")
SHORT = {"ingest": "ingest", "daily_metrics": "metrics", "content_pools": "pools", "kol_scoring": "kol",
         "implicit_follows": "follows", "nightly_training": "training", "ann_refresh": "ann"}
# The DAGs of a day's chain that leave the report to nightly_training, the day's last DAG with one:
# the report draws every table whichever DAG writes it (3-6 s a page at the end of each DAG run)
REPORT_LEFT = ("daily_metrics", "content_pools", "kol_scoring", "implicit_follows")
# run_dag(dag_id, day, conf): one DAG run; a failure it may raise that the loop survives is `tolerated`
RunDag = Callable[[str, dt.date, dict[str, Any]], None]


@dataclass(frozen=True)
class Step:
    day: dt.date
    dag_id: str
    conf: dict[str, Any]


def is_closed_loop(cfg: PlatformConfig) -> bool:
    """Whether the simulator is served by the recommendation path."""
    return cfg.simulator.exposure_policy == CLOSED_LOOP


def first_served_day(cfg: PlatformConfig) -> dt.date:
    """The first day the recommendation path serves the simulation (after the organic warm-up)."""
    return cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.organic_days)


def progress_path(cfg: PlatformConfig) -> Path:
    """Where the loop records its finished steps."""
    return cfg.data_root / "closed_loop" / "progress.json"


def log_path(cfg: PlatformConfig) -> Path:
    """Where the loop's full logs (Airflow, dbt, tasks) go."""
    return cfg.data_root / "closed_loop" / "loop.log"


def chain_conf(dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """`conf` of a chain DAG's run, with `report: false` for those of REPORT_LEFT (both drivers)."""
    return {**conf, "report": False} if dag_id in REPORT_LEFT else conf


def steps_for_day(cfg: PlatformConfig, day: dt.date) -> list[Step]:
    """The DAG runs of `day`: ingest only while warming up; the whole chain from the last warm-up day on."""
    start, last_warmup = cfg.simulator.start_date, first_served_day(cfg) - dt.timedelta(days=1)
    if day < last_warmup:
        return [Step(day, "ingest", {})]
    steps = []
    for dag_id in CHAIN:
        whole_warmup = dag_id == "daily_metrics" and day == last_warmup  # its metrics over the whole warm-up at once
        conf = {} if dag_id == "nightly_training" else {"through": day.isoformat()}
        steps.append(Step(start if whole_warmup else day, dag_id, chain_conf(dag_id, conf)))
    return steps


def _key(step: Step) -> str:
    return f"{step.dag_id}@{step.day.isoformat()}:{step.conf.get('through', '')}"


def read_progress(cfg: PlatformConfig) -> dict[str, str]:
    """Finished steps: key -> "success" or "failed: <message>"."""
    path = progress_path(cfg)
    return json.loads(path.read_text()) if path.exists() else {}


def _save(cfg: PlatformConfig, done: dict[str, str]) -> None:
    text = json.dumps(done, indent=1, sort_keys=True)
    atomic_write(progress_path(cfg), lambda tmp: tmp.write_text(text))


def run_loop(cfg: PlatformConfig, through: dt.date, run_dag: RunDag, tolerated: tuple[type[Exception], ...],
             terminal: TextIO) -> dict[str, str]:
    """Run every unfinished step of the days from the simulator's start through `through`, one
    progress line per day on `terminal`; returns the progress record."""
    done = read_progress(cfg)
    days = [cfg.simulator.start_date + dt.timedelta(days=i) for i in range((through - cfg.simulator.start_date).days + 1)]
    served_from = first_served_day(cfg)
    for i, day in enumerate(days, 1):
        steps = [s for s in steps_for_day(cfg, day) if _key(s) not in done]
        if not steps:
            continue
        parts, started = [], time.perf_counter()
        for step in steps:
            t0 = time.perf_counter()
            try:
                run_dag(step.dag_id, step.day, step.conf)
                done[_key(step)] = "success"
                parts.append(f"{SHORT[step.dag_id]} {time.perf_counter() - t0:.0f}s")
            except tolerated as e:
                done[_key(step)] = f"failed: {e}"
                parts.append(f"{SHORT[step.dag_id]} FAILED")
            _save(cfg, done)
        mode = "served" if day >= served_from else "organic"
        terminal.write(f"{day} [{i}/{len(days)}] {mode}: {' · '.join(parts)} = {time.perf_counter() - started:.0f}s\n")
    return done
