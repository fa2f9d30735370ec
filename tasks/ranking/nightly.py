"""The ranking part of nightly training (docs/METHODS.md "Ranking"), for the data through day `ds`:

1. `prepare`: dbt builds ranking_exposures for `exposure_days` (`ds`, and before the first full
   ranker its cold-start window), then `ensure_full_ranker` trains that first one through ds - 1.
   The DAG runs the two steps as its `ranking.dbt` task group and its `ranking.prepare` task.
2. `score` (tasks/ranking/distillation.py): the current full ranker (trained through ds - 1) scores the
   exposures of `ds` into distillation_predictions; `evaluate_full`: its AUC per head and segment
   on `ds` into ranking_eval (the next-day evaluation of the version that will be replaced).
3. `gate`: GX on the predictions (tasks/ranking/gate.py); a failure alerts and fails the
   task, the predictions stay stored for inspection and are never used.
4. `train_preranking` (whatever the gate did): the pre-ranker trained on `ds`, distilled from the
   gated predictions, or on labels only after a failed gate (or skipped, by config); published
   atomically as the current version.
5. `train_full`: the aged full ranker, 1 epoch on `ds` from the current version, published as
   current: tomorrow's scorer, whose predictions tomorrow's gate checks before any use.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from tasks.core import artifacts, registry
from tasks.core.config import ALL, PlatformConfig
from tasks.ops.alerts import DataQualityRejected
from tasks.ranking import evaluate, full, pre
from tasks.ranking.data import build_exposures
from tasks.ranking.distillation import FULL_RANKING, Skipped, gate_day, score_day, scorer_for, teacher

log = logging.getLogger(__name__)
PRERANKING = "preranking"


class DistillationRejected(DataQualityRejected):
    """The full ranker's predictions failed their GX gate."""


def exposure_days(cfg: PlatformConfig, ds: dt.date) -> dict[str, str]:
    """The days whose exposures the night builds, {"ds_from", "ds"}: `ds`, and before the first
    full ranker the `first_window_days` before it too (its cold-start training window)."""
    current = artifacts.current(registry.model_store(cfg, FULL_RANKING))
    first = ds - dt.timedelta(days=cfg.ranking.full.first_window_days) if current is None else ds
    return {"ds_from": first.isoformat(), "ds": ds.isoformat()}


def ensure_full_ranker(cfg: PlatformConfig, ds: dt.date) -> dict[str, str]:
    """The current full ranker; the first one is trained cold through ds - 1 (on the exposures of
    exposure_days, built before)."""
    current = artifacts.current(registry.model_store(cfg, FULL_RANKING))
    if current is None:
        current = full.train(cfg, ds - dt.timedelta(days=1), make_current=True)
        log.info("full_ranking: first version %s trained cold through %s", current.name, ds - dt.timedelta(days=1))
    return {"ds": str(ds), "full_ranking": current.name}


def prepare(cfg: PlatformConfig, ds: dt.date) -> dict[str, Any]:
    """Build the night's exposures (exposure_days); train the first full ranker if needed."""
    days = exposure_days(cfg, ds)
    build_exposures(cfg, dt.date.fromisoformat(days["ds_from"]), ds)
    return {"exposures_from": days["ds_from"], **ensure_full_ranker(cfg, ds)}


def score(cfg: PlatformConfig, ds: dt.date) -> dict[str, Any]:
    """Score the day's exposures with the current full ranker into the distillation set."""
    return score_day(cfg, ds)


def evaluate_full(cfg: PlatformConfig, ds: dt.date) -> dict[str, float]:
    """AUC per head (and segment) on `ds` of the full ranker that scored it, into ranking_eval."""
    rows = evaluate.evaluate(cfg, scorer_for(cfg, ds), ds)
    evaluate.write_eval(cfg, rows)
    overall = rows[rows.segment == ALL]
    return {str(r.head): round(float(r.auc), 4) for r in overall.itertuples()}


def gate(cfg: PlatformConfig, ds: dt.date) -> dict[str, Any]:
    """GX on the day's predictions; DistillationRejected (after the alert) when it fails."""
    outcome = gate_day(cfg, ds)
    if not outcome.success:
        raise DistillationRejected(f"{ds}: full-ranking predictions failed their gate ({len(outcome.failed)} "
                                   f"expectations); pre-ranking will not distil them. Data docs: {outcome.data_docs}")
    return {"day": str(ds), "passed": True, "data_docs": outcome.data_docs}


def train_preranking(cfg: PlatformConfig, ds: dt.date) -> dict[str, Any]:
    """Train the pre-ranker on `ds` (distilled if the gate passed, else label-only or skipped) and
    publish it as current."""
    current = artifacts.current(registry.model_store(cfg, PRERANKING))
    if current and registry.trained_through(current) >= ds:
        log.info("preranking %s is trained through %s already", current.name, ds)
        return {"day": str(ds), "version": current.name, "teacher": current.meta.get("supervision")}
    try:
        source = teacher(cfg, ds)
    except Skipped as e:
        log.warning("%s", e)
        return {"day": str(ds), "skipped": True}
    version = pre.train(cfg, ds, source, make_current=True)
    artifacts.prune(registry.model_store(cfg, PRERANKING), cfg.retrieval.versions_kept)
    return {"day": str(ds), "version": version.name, "teacher": version.meta["supervision"]}


def train_full(cfg: PlatformConfig, ds: dt.date) -> dict[str, Any]:
    """The aged full ranker: 1 epoch on `ds` from the current version, published as current."""
    store = registry.model_store(cfg, FULL_RANKING)
    current = artifacts.require_current(store)
    if registry.trained_through(current) >= ds:
        log.info("full_ranking %s is trained through %s already", current.name, ds)
        return {"version": current.name}
    version = full.train(cfg, ds, make_current=True)
    artifacts.prune(store, cfg.retrieval.versions_kept)
    return {"version": version.name, "training_window": version.meta["training_window"]}
