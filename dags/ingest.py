"""ingest: each day, land the day's batch (simulated, or wait for it in the landing folder),
validate it into the lake with quarantine, then publish the warehouse views (RAW_EVENTS asset) and
the experiments' assignments of every known user (docs/METHODS.md "Experiments").

In the closed loop (`simulator.exposure_policy: recpipe`) the simulated day is served by the
recommendation path, which reads the warehouse: `land_batch` then runs in the writer pool."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from tasks.core.config import get_config
from tasks.experiments.assignment import publish_assignments
from tasks.experiments.loop import is_closed_loop
from tasks.ingest import daily
from tasks.orchestration.wiring import RAW_EVENTS, dag_kwargs, writer_task_kwargs

cfg = get_config()


@dag(
    dag_id="ingest",
    description="Daily batch -> validated lake + quarantine -> warehouse views",
    max_active_runs=1,
    doc_md=__doc__,
    **dag_kwargs(cfg, schedule=cfg.schedules.ingest, tags=["ingest", cfg.ingest.source]),
)
def ingest_dag() -> None:
    if cfg.ingest.source == "simulator":

        @task(**(writer_task_kwargs(cfg) if is_closed_loop(cfg) else {}))
        def land_batch(ds: str | None = None) -> str:
            return daily.land_simulated_day(cfg, dt.date.fromisoformat(ds))

    else:

        @task.sensor(poke_interval=300, timeout=12 * 3600, mode="reschedule")
        def land_batch(ds: str | None = None) -> bool:
            return daily.batch_landed(cfg, dt.date.fromisoformat(ds))

    @task
    def load_batch(ds: str | None = None) -> dict:
        return daily.load_landed_batch(cfg, dt.date.fromisoformat(ds))

    @task(outlets=[RAW_EVENTS], **writer_task_kwargs(cfg))
    def publish_warehouse(ds: str | None = None, outlet_events=None) -> dict:
        outlet_events[RAW_EVENTS].extra = {"day": ds}  # the day daily_metrics rebuilds
        return daily.publish_warehouse(cfg)

    @task(**writer_task_kwargs(cfg))
    def assign_experiments() -> dict:
        return publish_assignments(cfg)

    land_batch() >> load_batch() >> publish_warehouse() >> assign_experiments()


ingest_dag()
