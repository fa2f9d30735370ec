"""content_pools: refresh the content pools declared in the platform config (`pools:`).

Each run renders the candidates of its pools in dbt (dbt/models/pools, one generic model; the
Cosmos task group `dbt`, one task per model and its tests), then each pool's new version is
checked by its GX suite and published by switching the pool's pointer; a pool's Asset
(recpipe_pool_<name>) is emitted only when its version is published, so index refreshes follow.
A rejected version raises a data-quality alert and fails its task; the previous
version stays current. The run ends by rewriting the nightly report (pools section).

- `content_pools`: every pool, after daily_metrics (the recpipe_metrics Asset), one refresh at the
  end of each day it announces (hourly pools too: each declared pool has a version after every
  day); or by hand with params day/through. It then checks that every declared pool has a current
  version (a data-quality alert names those without).
- `content_pools_hourly`: the pools with `refresh: hourly`, on `schedules.pools_hourly`, refreshed
  at the end of the run's data interval (or param `at`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, XComArg, dag, task

from tasks.core import days
from tasks.core.config import get_config
from tasks.orchestration.wiring import (
    METRICS,
    dag_kwargs,
    day_range_params,
    dbt_task_group,
    pool_asset,
    report_whatever_happens,
    writer_task_kwargs,
)
from tasks.pools import refresh as pools

cfg = get_config()


def _pool_tasks(names: list[str], window: XComArg) -> None:
    """dbt renders every pool of the run (task group `dbt`, vars from `window`:
    pools.candidates_window); then one publish task per pool, with its Asset; then the report is
    rewritten (whatever the pools' outcome)."""
    rendered = dbt_task_group(cfg, "dbt", selector="pools", window=window)
    published = []
    for name in names:

        @task(task_id=f"publish_{name}", outlets=[pool_asset(name)], **writer_task_kwargs(cfg))
        def publish(window: dict[str, Any], pool: str = name, outlet_events=None) -> dict[str, str]:
            version = pools.publish_all(cfg, pool, window["as_of"])
            outlet_events[pool_asset(pool)].extra = version
            return version

        published.append(rendered >> publish(window))

    @task(trigger_rule="all_done", **writer_task_kwargs(cfg))
    def check_every_pool_current() -> list[str]:
        return pools.check_every_pool_current(cfg)

    published >> check_every_pool_current()
    report_whatever_happens(cfg, published)  # the report also after a rejected version; the run fails then


# The daily run refreshes every pool at the end of each day (hourly ones too, so that each has a
# version after every day); the hourly DAG refreshes the hourly ones in between.
daily = [p.name for p in cfg.pools]
hourly = [p.name for p in cfg.pools if p.refresh == "hourly"]

if daily:

    @dag(
        dag_id="content_pools",
        description="Daily content pools: dbt candidates -> GX per version -> publish (pointer switch)",
        max_active_runs=1,
        doc_md=__doc__,
        params=day_range_params("refresh"),
        **dag_kwargs(cfg, schedule=[METRICS], tags=["pools", "dbt", "gx"]),
    )
    def content_pools_dag() -> None:
        @task
        def refresh_window(params=None, triggering_asset_events=None, logical_date=None) -> dict[str, Any]:
            times = pools.daily_refresh_times(days.resolve_days(params, triggering_asset_events, logical_date))
            return pools.candidates_window(times, daily)

        _pool_tasks(daily, refresh_window())

    content_pools_dag()

if hourly:

    @dag(
        dag_id="content_pools_hourly",
        description="Hourly content pools (e.g. pool_6h): dbt candidates -> GX per version -> publish",
        max_active_runs=1,
        doc_md=__doc__,
        params={"at": Param(None, type=["null", "string"], description="refresh time 'YYYY-MM-DD HH:00:00' (UTC)")},
        **dag_kwargs(cfg, schedule=cfg.schedules.pools_hourly, tags=["pools", "dbt", "gx"]),
    )
    def content_pools_hourly_dag() -> None:
        @task
        def refresh_window(params=None, data_interval_end=None) -> dict[str, Any]:
            times = pools.hourly_refresh_time((params or {}).get("at"), data_interval_end)
            return pools.candidates_window(times, hourly)

        _pool_tasks(hourly, refresh_window())

    content_pools_hourly_dag()
