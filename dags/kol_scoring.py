"""kol_scoring: after daily_metrics announces days (the recpipe_metrics Asset), rebuild their KOL
features in dbt (kol_features: shares and the offsite visits they brought over the trailing
`kol.window_days`), score each day (empirical-Bayes smoothed visits per share, GX-checked) into
kol_scores, announce the days (the recpipe_kol_scores Asset) and rewrite the report. PLAYBOOK §6; the logic lives in
tasks/kol.py and dbt/models/social.

Run it for a day or a range from the UI (Trigger with config), the CLI
(`airflow dags trigger kol_scoring --conf '{"day": "2026-01-05", "through": "2026-01-09"}'`), or
`recpipe kol --day D [--through D2]`."""

from __future__ import annotations

from airflow.sdk import dag, task

from tasks import kol
from tasks.config import get_config
from tasks.dag_wiring import (
    KOL_SCORES, METRICS,
    dag_kwargs, day_range_params, resolve_days_task, write_report_task, writer_task_kwargs,
)

cfg = get_config()


@dag(
    dag_id="kol_scoring",
    description="dbt kol_features -> empirical-Bayes KOL scores -> GX -> kol_scores",
    max_active_runs=1,
    doc_md=__doc__,
    params=day_range_params("score"),
    **dag_kwargs(cfg, schedule=[METRICS], tags=["social", "kol", "dbt", "gx"]),
)
def kol_scoring_dag() -> None:
    @task(**writer_task_kwargs(cfg))
    def build_features(days: dict[str, str]) -> dict[str, str]:
        kol.build_features(cfg, days["ds_from"], days["ds"])
        return days

    @task(outlets=[KOL_SCORES], **writer_task_kwargs(cfg))
    def score(days: dict[str, str], outlet_events=None) -> list[dict]:
        summaries = kol.score_days(cfg, days["ds_from"], days["ds"])
        outlet_events[KOL_SCORES].extra = days
        return summaries

    score(build_features(resolve_days_task())) >> write_report_task(cfg)


kol_scoring_dag()
