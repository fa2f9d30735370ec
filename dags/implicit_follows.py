"""implicit_follows: after daily_metrics announces days (the recpipe_metrics Asset), rebuild their
implicit follows in dbt (implicit_follows: per user, the authors they click, watch and like most
over the trailing `implicit_follows.window_days` without following them), check each day with GX
against the follow graph, and announce the days (the recpipe_implicit_follows Asset) to the
U2A2I retrieval channel, then rewrite the report. PLAYBOOK §2; the logic lives in dbt/models/social and
tasks/implicit_follows.py.

Run it for a day or a range from the UI (Trigger with config), the CLI
(`airflow dags trigger implicit_follows --conf '{"day": "2026-01-05", "through": "2026-01-09"}'`),
or `recpipe implicit-follows --day D [--through D2]`."""

from __future__ import annotations

from airflow.sdk import dag, task

from tasks import implicit_follows
from tasks.config import get_config
from tasks.dag_wiring import (
    IMPLICIT_FOLLOWS, METRICS,
    dag_kwargs, day_range_params, resolve_days_task, write_report_task, writer_task_kwargs,
)

cfg = get_config()


@dag(
    dag_id="implicit_follows",
    description="dbt implicit_follows (U2A2I) -> GX against the follow graph -> announce",
    max_active_runs=1,
    doc_md=__doc__,
    params=day_range_params("build"),
    **dag_kwargs(cfg, schedule=[METRICS], tags=["social", "u2a2i", "dbt", "gx"]),
)
def implicit_follows_dag() -> None:
    @task(**writer_task_kwargs(cfg))
    def build(days: dict[str, str]) -> dict[str, str]:
        implicit_follows.build(cfg, days["ds_from"], days["ds"])
        return days

    # A reader too: DuckDB refuses a reader while another process writes, so it holds the pool.
    @task(outlets=[IMPLICIT_FOLLOWS], **writer_task_kwargs(cfg))
    def validate(days: dict[str, str], outlet_events=None) -> list[dict]:
        summaries = implicit_follows.validate_days(cfg, days["ds_from"], days["ds"])
        outlet_events[IMPLICIT_FOLLOWS].extra = days
        return summaries

    validate(build(resolve_days_task())) >> write_report_task(cfg)


implicit_follows_dag()
