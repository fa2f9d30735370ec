"""daily_metrics: when the ingest DAG publishes a day (the recpipe_raw_events Asset), rebuild that
day's core metrics in dbt (metrics_daily, retention_daily for the days it completes, ab_readout,
the experiment readout), each model followed by its dbt tests, then check the experiments' sample
ratios (an alert per mismatch), write the HTML report and announce the days
(the recpipe_metrics Asset) to the pool and social DAGs.

Run it for a day or a range from the UI (Trigger with config) or the CLI:
`airflow dags trigger daily_metrics --conf '{"day": "2026-01-05", "through": "2026-01-09"}'`
(`through` optional), or `recpipe metrics --start D1 --end D2` (a backfill)."""

from __future__ import annotations

from airflow.sdk import dag, task

from tasks.core.config import get_config
from tasks.experiments.readout import check_sample_ratio
from tasks.orchestration.wiring import (
    METRICS,
    RAW_EVENTS,
    dag_kwargs,
    day_range_params,
    dbt_task_group,
    resolve_days_task,
    rewrite_report,
    writer_task_kwargs,
)

cfg = get_config()


@dag(
    dag_id="daily_metrics",
    description="dbt: DAU, LT7/LT30, retention, engagement, UGC penetration, A/B readout -> report",
    max_active_runs=1,
    doc_md=__doc__,
    params=day_range_params("rebuild"),
    **dag_kwargs(cfg, schedule=[RAW_EVENTS], tags=["metrics", "dbt"]),
)
def daily_metrics_dag() -> None:
    days = resolve_days_task()
    marts = dbt_task_group(cfg, "dbt", selector="metrics", window=days)

    # DuckDB: a reader may not open the file while a writer has it. The METRICS event tells the
    # pool and social DAGs which days are ready.
    @task(outlets=[METRICS], **writer_task_kwargs(cfg))
    def write_report(days: dict[str, str], params=None, outlet_events=None) -> str:
        outlet_events[METRICS].extra = days
        return rewrite_report(cfg, params)

    # One data-quality alert per experiment with a sample-ratio mismatch (experiment_srm).
    @task(task_id="check_sample_ratio", **writer_task_kwargs(cfg))
    def sample_ratio() -> list[dict]:
        return check_sample_ratio(cfg)

    marts >> [sample_ratio(), write_report(days)]


daily_metrics_dag()
