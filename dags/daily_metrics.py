"""daily_metrics: when the ingest DAG publishes a day (the recpipe_raw_events Asset), rebuild that
day's core metrics in dbt (metrics_daily, retention_daily for the days it completes, ab_readout),
each model followed by its dbt tests, then write the HTML report and announce the days
(the recpipe_metrics Asset) to the pool and social DAGs.

Run it for a day or a range from the UI (Trigger with config) or the CLI:
`airflow dags trigger daily_metrics --conf '{"day": "2026-01-05", "through": "2026-01-09"}'`
(`through` optional), or `recpipe metrics --start D1 --end D2` (a backfill)."""

from __future__ import annotations

from airflow.sdk import dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior

from tasks import dbt_project
from tasks.config import get_config
from tasks.dag_wiring import (
    METRICS, RAW_EVENTS,
    dag_kwargs, day_range_params, resolve_days_task, writer_task_kwargs,
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
    marts = DbtTaskGroup(
        group_id="dbt",
        project_config=ProjectConfig(
            dbt_project_path=dbt_project.DBT_DIR,
            manifest_path=dbt_project.MANIFEST_PATH,
            env_vars=dbt_project.dbt_env(cfg),
            install_dbt_deps=False,
        ),
        profile_config=ProfileConfig(
            profile_name="recpipe", target_name="duckdb", profiles_yml_filepath=dbt_project.PROFILES_PATH
        ),
        # dbt in the task's process (profiles.yml: keep_open false, so the file is released after it).
        execution_config=ExecutionConfig(invocation_mode=InvocationMode.DBT_RUNNER),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.BUILD,
            select=list(dbt_project.METRICS_PATHS),  # dbt/selectors.yml `metrics`: not the pools' models
        ),
        operator_args={
            "vars": dbt_project.dbt_vars(
                cfg,
                ds="{{ ti.xcom_pull(task_ids='resolve_days')['ds'] }}",
                ds_from="{{ ti.xcom_pull(task_ids='resolve_days')['ds_from'] }}",
            ),
            "append_env": True,
            **writer_task_kwargs(cfg),
        },
    )

    # DuckDB: a reader may not open the file while a writer has it. The METRICS event tells the
    # pool and social DAGs which days are ready.
    @task(outlets=[METRICS], **writer_task_kwargs(cfg))
    def write_report(outlet_events=None, ti=None) -> str:
        from tasks.report import write_report

        outlet_events[METRICS].extra = ti.xcom_pull(task_ids="resolve_days")
        return str(write_report(cfg))

    resolve_days_task() >> marts >> write_report()


daily_metrics_dag()
