"""nightly_training: train, evaluate, gate and publish the retrieval models (PLAYBOOK §2, §3).

After daily_metrics announces days (the recpipe_metrics Asset) whose last is ds, or by hand with
param `day` (= ds), each model of `retrieval.nightly_models` runs in its own task group:

- `train`: a candidate version trained through ds - 1 (two-tower aged: warm-started from the
  current version, 1 epoch on the new day(s); ItemCF / Swing: the window's neighbour table),
  stored in the model registry, not current;
- `evaluate`: candidate, current version and popularity scored on the clicks of ds (Recall,
  NDCG, HitRate, coverage, tail recall per segment) into the `retrieval_eval` table;
- `gate`: the GX suite on the evaluation (Recall@K not below the current version's by more than
  `evaluation.max_recall_drop`, above popularity) into `model_gate`; a failure raises a
  data-quality alert and fails the task, so nothing is published;
- `publish`: switch the model's CURRENT pointer (atomic) and emit recpipe_model_<model>, which
  schedules ann_refresh.

The run ends by rewriting the report (retrieval section). Logic: tasks/nightly_training.py.
`recpipe train --day D` runs it from the command line.
"""

from __future__ import annotations

from airflow.sdk import TaskGroup, dag, task

from tasks import nightly_training
from tasks.config import get_config
from tasks.dag_wiring import (
    METRICS,
    dag_kwargs,
    day_range_params,
    model_asset,
    report_whatever_happens,
    resolve_days_task,
    writer_task_kwargs,
)

cfg = get_config()


def _model_tasks(model: str, days) -> object:
    """train >> evaluate >> gate >> publish of one model; returns the publish task."""
    import datetime as dt

    def ds(days: dict[str, str]) -> dt.date:
        return dt.date.fromisoformat(days["ds"])

    with TaskGroup(group_id=model):

        @task(**writer_task_kwargs(cfg))
        def train(days: dict[str, str]) -> str:
            return nightly_training.train_candidate(cfg, model, ds(days))

        @task(**writer_task_kwargs(cfg))
        def evaluate(candidate: str, days: dict[str, str]) -> dict:
            return nightly_training.evaluate_candidate(cfg, model, candidate, ds(days))

        @task(**writer_task_kwargs(cfg))
        def gate(candidate: str, days: dict[str, str]) -> str:
            nightly_training.gate(cfg, model, candidate, ds(days))
            return candidate

        @task(outlets=[model_asset(model)])
        def publish(candidate: str, outlet_events=None) -> dict:
            published = nightly_training.publish(cfg, model, candidate)
            outlet_events[model_asset(model)].extra = published
            return published

        candidate = train(days)
        evaluated = evaluate(candidate, days)
        gated = gate(candidate, days)
        evaluated >> gated
        return publish(gated)


@dag(
    dag_id="nightly_training",
    description="Retrieval models: train candidate -> evaluate vs current and popularity -> GX gate -> publish",
    max_active_runs=1,
    doc_md=__doc__,
    params=day_range_params("evaluate on (training ends the day before)"),
    **dag_kwargs(cfg, schedule=[METRICS], tags=["retrieval", "training", "gx"]),
)
def nightly_training_dag() -> None:
    days = resolve_days_task()
    published = [_model_tasks(model, days) for model in cfg.retrieval.nightly_models]
    report_whatever_happens(cfg, published)  # the report also after a rejected candidate; the run fails then


nightly_training_dag()
