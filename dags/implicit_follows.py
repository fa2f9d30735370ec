"""implicit_follows: after daily_metrics announces days (the recpipe_metrics Asset), rebuild their
implicit follows in dbt (implicit_follows: per user, the authors they click, watch and like most
over the trailing `implicit_follows.window_days` without following them), check each day with GX
against the follow graph, and announce the days (the recpipe_implicit_follows Asset) to the
U2A2I retrieval channel, then rewrite the report. docs/METHODS.md "Implicit follows"; the logic lives in dbt/models/social and
tasks/social/implicit_follows.py.

Run it for a day or a range from the UI (Trigger with config), the CLI
(`airflow dags trigger implicit_follows --conf '{"day": "2026-01-05", "through": "2026-01-09"}'`),
or `recpipe implicit-follows --day D [--through D2]`."""

from __future__ import annotations

from tasks.core.config import get_config
from tasks.orchestration.wiring import IMPLICIT_FOLLOWS, SocialDag, social_dag
from tasks.social import implicit_follows

implicit_follows_dag = social_dag(
    get_config(),
    SocialDag(
        dag_id="implicit_follows",
        description="dbt implicit_follows (U2A2I) -> GX against the follow graph -> announce",
        tag="u2a2i",
        selector="implicit_follows",
        check_task_id="validate",
        check=implicit_follows.validate_days,
        asset=IMPLICIT_FOLLOWS,
        verb="build",
    ),
    doc_md=__doc__,
)
