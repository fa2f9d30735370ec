"""kol_scoring: after daily_metrics announces days (the recpipe_metrics Asset), rebuild their KOL
features in dbt (kol_features: shares and the offsite visits they brought over the trailing
`kol.window_days`), score each day (empirical-Bayes smoothed visits per share, GX-checked) into
kol_scores, announce the days (the recpipe_kol_scores Asset) and rewrite the report. docs/METHODS.md "KOL scoring"; the logic lives in
tasks/social/kol.py and dbt/models/social.

Run it for a day or a range from the UI (Trigger with config), the CLI
(`airflow dags trigger kol_scoring --conf '{"day": "2026-01-05", "through": "2026-01-09"}'`), or
`recpipe kol --day D [--through D2]`."""

from __future__ import annotations

from tasks.core.config import get_config
from tasks.orchestration.wiring import KOL_SCORES, SocialDag, social_dag
from tasks.social import kol

kol_scoring = social_dag(
    get_config(),
    SocialDag(
        dag_id="kol_scoring",
        description="dbt kol_features -> empirical-Bayes KOL scores -> GX -> kol_scores",
        tag="kol",
        selector="kol",
        check_task_id="score",
        check=kol.score_days,
        asset=KOL_SCORES,
        verb="score",
    ),
    doc_md=__doc__,
)
