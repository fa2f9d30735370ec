"""closed_loop: one simulated day per run through the real DAGs (docs/METHODS.md "Closed loop").

Scheduled daily, with catch-up from the simulator's start date and one run at a time, only when the
simulator is served by the recommendation path (`simulator.exposure_policy: recpipe`); every other
DAG then has no schedule of its own and runs when this one triggers it, for the same day, waiting
for it to finish: ingest (the day served from the artifacts current at its start) -> daily_metrics
-> content_pools -> kol_scoring -> implicit_follows -> nightly_training -> ann_refresh. Organic
warm-up days run ingest only; the last of them runs the whole chain, its daily_metrics over the whole
warm-up. A re-run of a day re-triggers its runs (reset), each idempotent for its day.
`recpipe experiment run NAME` runs the same chain from the command line.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from tasks.core.config import get_config
from tasks.experiments.loop import CHAIN, chain_conf, first_served_day, is_closed_loop
from tasks.orchestration.wiring import dag_kwargs

cfg = get_config()


def _trigger(dag_id: str, conf: dict[str, Any]) -> TriggerDagRunOperator:
    return TriggerDagRunOperator(
        task_id=f"run_{dag_id}",
        trigger_dag_id=dag_id,
        trigger_run_id=f"closed_loop__{{{{ ds }}}}__{dag_id}",
        logical_date="{{ logical_date }}",
        conf=chain_conf(dag_id, conf),
        reset_dag_run=True,
        wait_for_completion=True,
        poke_interval=10,
        failed_states=["failed"],
    )


kwargs = dag_kwargs(cfg, schedule=None, tags=["experiments", "simulator"])
if is_closed_loop(cfg):
    kwargs.update(schedule="@daily", catchup=True)


@dag(dag_id="closed_loop", description="one simulated day through every DAG, served by the recommendation path",
     max_active_runs=1, doc_md=__doc__, **kwargs)
def closed_loop_dag() -> None:
    @task
    def plan(ds: str | None = None) -> dict:
        """Whether the day runs the whole chain, and the first day its daily_metrics rebuilds."""
        day, last_warmup = dt.date.fromisoformat(ds), first_served_day(cfg) - dt.timedelta(days=1)
        first = cfg.simulator.start_date if day == last_warmup else day
        return {"chain": day >= last_warmup, "metrics_from": first.isoformat()}

    @task.short_circuit
    def runs_chain(planned: dict) -> bool:
        return planned["chain"]

    planned = plan()
    day_conf = {"day": "{{ ds }}", "through": "{{ ds }}"}
    ingest = _trigger("ingest", day_conf)
    gate = runs_chain(planned)
    metrics = _trigger("daily_metrics", {"day": "{{ ti.xcom_pull(task_ids='plan')['metrics_from'] }}",
                                         "through": "{{ ds }}"})
    rest = [_trigger(dag_id, day_conf) for dag_id in CHAIN if dag_id not in ("ingest", "daily_metrics")]
    planned >> ingest >> gate >> metrics
    previous = metrics
    for trigger in rest:
        previous >> trigger
        previous = trigger


closed_loop_dag()
