"""What every recpipe DAG shares: default args, the failure notifier, tags, and the Assets
through which DAGs hand data to each other (so a DAG file stays thin wiring)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, Param, task

from tasks.config import PlatformConfig
from tasks.notifier import RecpipeNotifier

RAW_EVENTS = Asset(name="recpipe_raw_events", uri="x-recpipe://warehouse/raw/events", group="recpipe")
# daily_metrics announces the days it rebuilt: extra {"ds_from": first, "ds": last}.
METRICS = Asset(name="recpipe_metrics", uri="x-recpipe://warehouse/marts/metrics", group="recpipe")
KOL_SCORES = Asset(name="recpipe_kol_scores", uri="x-recpipe://warehouse/social/kol_scores", group="recpipe")
IMPLICIT_FOLLOWS = Asset(
    name="recpipe_implicit_follows", uri="x-recpipe://warehouse/social/implicit_follows", group="recpipe"
)


def model_asset(model: str) -> Asset:
    """The Asset nightly_training emits when a new version of a model becomes current (extra: version)."""
    return Asset(name=f"recpipe_model_{model}", uri=f"x-recpipe://artifacts/models/{model}", group="recpipe")


def pool_asset(pool: str) -> Asset:
    """The Asset a content pool's refresh emits when a new version is published (extra: version)."""
    return Asset(name=f"recpipe_pool_{pool}", uri=f"x-recpipe://warehouse/pools/{pool}", group="recpipe")


def default_args(cfg: PlatformConfig) -> dict[str, Any]:
    """Owner, retries and the failure alert for every task of every recpipe DAG."""
    return {
        "owner": cfg.airflow.owner,
        "retries": cfg.airflow.retries,
        "retry_delay": dt.timedelta(minutes=5),
        "on_failure_callback": RecpipeNotifier(),
    }


def dag_kwargs(cfg: PlatformConfig, *, schedule: Any, tags: list[str]) -> dict[str, Any]:
    """Keyword arguments common to every recpipe @dag."""
    return {
        "schedule": schedule,
        "start_date": dt.datetime.combine(cfg.airflow.start_date or cfg.simulator.start_date, dt.time(), tzinfo=dt.timezone.utc),
        "catchup": False,
        "default_args": default_args(cfg),
        "on_failure_callback": RecpipeNotifier(title="Airflow DAG run failed"),
        "tags": ["recpipe", *tags],
    }


def writer_task_kwargs(cfg: PlatformConfig) -> dict[str, Any]:
    """Task arguments of every task that writes the DuckDB warehouse: the one-slot pool."""
    return {"pool": cfg.airflow.warehouse_pool, "pool_slots": 1}


WATCHER = "fail_run_if_any_failed"


def report_whatever_happens(cfg: PlatformConfig, upstream: list[Any]) -> None:
    """End a DAG with the report, written whatever `upstream` did (trigger rule all_done), and a
    watcher (Airflow's watcher pattern): the report is a leaf that succeeds, so without a leaf
    that fails the run would look successful after a rejected version. The watcher runs, and
    fails, only when an upstream task failed; otherwise it is skipped. Its failure raises no
    extra alert (the failed task and the run already did)."""

    @task(task_id=WATCHER, trigger_rule="one_failed", retries=0, on_failure_callback=None)
    def watcher() -> None:
        raise RuntimeError("an upstream task failed (see its alert): this run is marked failed")

    upstream >> write_report_task(cfg, trigger_rule="all_done")
    upstream >> watcher()


def write_report_task(cfg: PlatformConfig, **task_kwargs: Any) -> Any:
    """The last task of a DAG whose tables the nightly report draws: rewrite the report. In the
    writer pool: DuckDB refuses a reader while another process writes."""

    @task(task_id="write_report", **writer_task_kwargs(cfg), **task_kwargs)
    def write_report() -> str:
        from tasks.report import write_report

        return str(write_report(cfg))

    return write_report()


def day_range_params(verb: str) -> dict[str, Param]:
    """Params of a DAG run for a day or a range of days (UI: Trigger with config)."""
    return {
        "day": Param(None, type=["null", "string"], format="date", description=f"first day to {verb}"),
        "through": Param(None, type=["null", "string"], format="date", description="last day (default: day)"),
    }


def resolve_days_task() -> Any:
    """The first task of a day-range DAG: {"ds_from", "ds"} from its params, the triggering asset
    events, or the logical date (tasks.metrics_run.resolve_days)."""

    @task(task_id="resolve_days")
    def resolve_days(params=None, triggering_asset_events=None, logical_date=None) -> dict[str, str]:
        from tasks.metrics_run import resolve_days

        return resolve_days(params, triggering_asset_events, logical_date)

    return resolve_days()
