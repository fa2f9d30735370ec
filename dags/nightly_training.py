"""nightly_training: train, evaluate, gate and publish the retrieval models (docs/METHODS.md "Nightly retrieval gate and publish").

After daily_metrics announces days (the recpipe_metrics Asset) whose last is ds, or by hand with
param `day` (= ds), each model of `retrieval.nightly_models` runs in its own task group:

- `train`: a candidate version trained through ds - 1 (two-tower aged: warm-started from the
  current version, 1 epoch on the new day(s); ItemCF / Swing: the window's neighbour table),
  stored in the model registry, not current;
- `evaluate`: candidate, current version and popularity scored on the clicks of ds (Recall,
  NDCG, HitRate, coverage, tail recall per segment) into the `retrieval_eval` table;
- `gate`: the GX suite on the evaluation (no drop of Recall@K against the current version that is
  both beyond the users' noise (paired bootstrap) and above `evaluation.max_recall_drop`; above
  popularity) into `model_gate`; a failure raises a
  data-quality alert and fails the task, so nothing is published;
- `publish`: switch the model's CURRENT pointer (atomic) and emit recpipe_model_<model>, which
  schedules ann_refresh.

The `ranking` group (docs/METHODS.md "Ranking"; tasks/ranking/nightly.py): exposures of ds built by dbt
(the task group `ranking.dbt`; before the first full ranker also its cold-start window, on which
`prepare` trains it) ->
the current full ranker scores them into the distillation set and is evaluated on them (AUC per
head and segment) -> the GX gate on the predictions (a failure alerts, fails the task and keeps
the predictions for inspection) -> the pre-ranker trains on ds, distilled from the gated
predictions or on labels only after a failure -> the aged full ranker trains 1 epoch on ds. Both
emit recpipe_model_<name> when published.

The run ends by rewriting the report; a failed gate fails the run (watcher task). Logic:
tasks/retrieval/nightly.py, tasks/ranking/nightly.py.
`recpipe train --day D` runs it from the command line.
The task modules are imported inside the tasks: they load torch and faiss, which would make every
parse of this file slow (docs/METHODS.md "DAGs and Assets").
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import TaskGroup, dag, task

from tasks.core.config import get_config
from tasks.orchestration.wiring import (
    METRICS,
    dag_kwargs,
    day_range_params,
    dbt_task_group,
    model_asset,
    report_whatever_happens,
    resolve_days_task,
    writer_task_kwargs,
)

cfg = get_config()


def ds(days: dict[str, str]) -> dt.date:
    """The run's last day (resolve_days)."""
    return dt.date.fromisoformat(days["ds"])


def _model_tasks(model: str, days) -> object:
    """train >> evaluate >> gate >> publish of one model; returns the publish task."""
    with TaskGroup(group_id=model):

        @task(**writer_task_kwargs(cfg))
        def train(days: dict[str, str]) -> str:
            from tasks.retrieval import nightly as nightly_training
            return nightly_training.train_candidate(cfg, model, ds(days))

        @task(**writer_task_kwargs(cfg))
        def evaluate(candidate: str, days: dict[str, str]) -> dict:
            from tasks.retrieval import nightly as nightly_training
            return nightly_training.evaluate_candidate(cfg, model, candidate, ds(days))

        @task(**writer_task_kwargs(cfg))
        def gate(candidate: str, days: dict[str, str]) -> str:
            from tasks.retrieval import nightly as nightly_training
            nightly_training.gate(cfg, model, candidate, ds(days))
            return candidate

        @task(outlets=[model_asset(model)])
        def publish(candidate: str, outlet_events=None) -> dict:
            from tasks.retrieval import nightly as nightly_training
            published = nightly_training.publish(cfg, model, candidate)
            outlet_events[model_asset(model)].extra = published
            return published

        candidate = train(days)
        evaluated = evaluate(candidate, days)
        gated = gate(candidate, days)
        evaluated >> gated
        return publish(gated)


def _ranking_tasks(days) -> list:
    """exposure_days >> dbt (task group: ranking_exposures and its tests) >> prepare >> score >>
    gate, evaluate_full; train_preranking after the gate whatever it did; train_full after scoring
    and evaluation (they use the version it replaces)."""
    with TaskGroup(group_id="ranking"):

        @task
        def exposure_days(days: dict[str, str]) -> dict[str, str]:
            from tasks.ranking import nightly as nightly_ranking
            return nightly_ranking.exposure_days(cfg, ds(days))

        @task(**writer_task_kwargs(cfg))
        def prepare(window: dict[str, str], days: dict[str, str]) -> dict:
            from tasks.ranking import nightly as nightly_ranking
            return {"exposures_from": window["ds_from"], **nightly_ranking.ensure_full_ranker(cfg, ds(days))}

        @task(**writer_task_kwargs(cfg))
        def score(_: dict, days: dict[str, str]) -> dict:
            from tasks.ranking import nightly as nightly_ranking
            return nightly_ranking.score(cfg, ds(days))

        @task(**writer_task_kwargs(cfg))
        def evaluate_full(_: dict, days: dict[str, str]) -> dict:
            from tasks.ranking import nightly as nightly_ranking
            return nightly_ranking.evaluate_full(cfg, ds(days))

        @task(**writer_task_kwargs(cfg))
        def gate(_: dict, days: dict[str, str]) -> dict:
            from tasks.ranking import nightly as nightly_ranking
            return nightly_ranking.gate(cfg, ds(days))

        @task(trigger_rule="all_done", outlets=[model_asset("preranking")], **writer_task_kwargs(cfg))
        def train_preranking(days: dict[str, str], outlet_events=None) -> dict:
            from tasks.ranking import nightly as nightly_ranking
            trained = nightly_ranking.train_preranking(cfg, ds(days))
            outlet_events[model_asset("preranking")].extra = trained
            return trained

        @task(outlets=[model_asset("full_ranking")], **writer_task_kwargs(cfg))
        def train_full(days: dict[str, str], outlet_events=None) -> dict:
            from tasks.ranking import nightly as nightly_ranking
            trained = nightly_ranking.train_full(cfg, ds(days))
            outlet_events[model_asset("full_ranking")].extra = trained
            return trained

        window = exposure_days(days)
        prepared = dbt_task_group(cfg, "dbt", selector="ranking", window=window) >> prepare(window, days)
        scored = score(prepared, days)
        evaluated = evaluate_full(prepared, days)
        gated = gate(scored, days)
        pre = train_preranking(days)
        gated >> pre
        full = train_full(days)
        [scored, evaluated, pre] >> full
        return [pre, full]


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
    if cfg.ranking.nightly:
        published += _ranking_tasks(days)
    report_whatever_happens(cfg, published)  # the report also after a rejected candidate; the run fails then


nightly_training_dag()
