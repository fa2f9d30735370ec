"""Nightly training of the registry models (docs/METHODS.md "Nightly retrieval gate and publish"): train -> evaluate -> gate -> publish.

With the data complete through day `ds`, each model of `retrieval.nightly_models` gets a candidate
version trained through ds - 1 (two-tower: aged, warm-started from the current version; ItemCF /
Swing: the window's neighbour table), not yet current. The candidate, the current version and
the popularity baseline are then scored on the clicks of `ds` (tasks/retrieval/evaluate.py, rows in
`retrieval_eval` under their version names). The gate (GX suite expectations/retrieval.py) lets
the candidate through only if its Recall@K (K = evaluation.k[0]) is not below the current
version's by more than `evaluation.max_recall_drop` (relative) and beats popularity; each gate is
a row of `model_gate`. A failed gate raises a data-quality alert listing the failed expectations
and fails the task: the candidate stays a non-current version for inspection and nothing is
announced. Publishing switches the store's CURRENT pointer (atomic) and prunes old versions.

A model already trained through ds - 1 (a re-run of the night) is not retrained: its current
version is the candidate, and the night re-checks and re-announces it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from expectations.retrieval import model_gate_expectations
from expectations.runner import alert_failure, validate_frame
from models.retrieval.retriever import Retriever
from models.retrieval.two_tower_retriever import TwoTowerRetriever
from tasks.core import artifacts, registry
from tasks.core.config import ALL, PlatformConfig
from tasks.core.warehouse import connect, replace_rows
from tasks.retrieval import i2i
from tasks.retrieval import two_tower as train_two_tower
from tasks.retrieval.data import connect_read
from tasks.retrieval.evaluate import EvalData, load_eval_data, popularity, score_channel, write_results

log = logging.getLogger(__name__)
BASELINE = "popularity"


class ModelRejected(RuntimeError):
    """A candidate version failed its evaluation gate."""


@dataclass(frozen=True)
class NightlyModel:
    """How the night trains a registry model and serves a version of it for its evaluation."""

    train: Callable[[PlatformConfig, dt.date], artifacts.Version]
    retriever: Callable[[PlatformConfig, artifacts.Version, EvalData], Retriever]


def _two_tower_retriever(cfg: PlatformConfig, version: artifacts.Version, data: EvalData) -> Retriever:
    with connect_read(cfg) as con:
        users = train_two_tower.load_users(con, data.day)
    return TwoTowerRetriever(version, data.catalogue, data.train, users)


def _i2i(model: str) -> NightlyModel:
    return NightlyModel(
        train=lambda cfg, day: i2i.train(cfg, model, day),
        retriever=lambda cfg, version, data: i2i.retriever(cfg, version, data.catalogue, data.train),
    )


# retrieval.nightly_models names these (config-validated)
NIGHTLY_MODELS: dict[str, NightlyModel] = {
    "two_tower": NightlyModel(train=lambda cfg, day: train_two_tower.train(cfg, day), retriever=_two_tower_retriever),
    "itemcf": _i2i("itemcf"),
    "swing": _i2i("swing"),
}


def training_day(ds: dt.date) -> dt.date:
    """The last training day of the night that has data through `ds` (ds is the evaluation day)."""
    return ds - dt.timedelta(days=1)


def train_candidate(cfg: PlatformConfig, model: str, ds: dt.date) -> str:
    """Train `model` through ds - 1 and publish it as a (not current) version; return its name."""
    day = training_day(ds)
    current = artifacts.current(registry.model_store(cfg, model))
    last = registry.trained_through(current) if current else None
    if last and last >= day:
        log.info("%s: current version %s is trained through %s already: it is the candidate", model, current.name, last)
        return current.name
    return NIGHTLY_MODELS[model].train(cfg, day).name


def evaluate_candidate(cfg: PlatformConfig, model: str, candidate: str, ds: dt.date) -> dict[str, Any]:
    """Score the candidate, the current version (if another) and popularity on the clicks of `ds`
    into `retrieval_eval`; return Recall@K of each."""
    store = registry.model_store(cfg, model)
    data = load_eval_data(cfg, training_day(ds))
    ks = tuple(cfg.evaluation.k)
    versions = {candidate: artifacts.load(store, candidate)}
    current = artifacts.current(store)
    if current and current.name != candidate:
        versions[current.name] = current
    frames = [score_channel(data, popularity(cfg, data), ks)]
    frames += [score_channel(data, NIGHTLY_MODELS[model].retriever(cfg, v, data), ks, model, name) for name, v in versions.items()]
    results = pd.concat(frames, ignore_index=True)
    results.insert(0, "day", data.day)
    write_results(cfg, results)
    recall = results[(results.segment == ALL) & (results.k == ks[0]) & (results.metric == "recall")]
    summary = {"day": str(data.day), "k": ks[0], "users": len(data.users),
               **{f"recall_{r.version or r.channel}": round(r.value, 5) for r in recall.itertuples()}}
    log.info("%s evaluation on %s: %s", model, ds, summary)
    return summary


def _gate_row(cfg: PlatformConfig, model: str, candidate: str, ds: dt.date) -> dict[str, Any]:
    """The gate's inputs, read back from retrieval_eval (the table is what is gated)."""
    day, k = training_day(ds), cfg.evaluation.k[0]
    current = artifacts.current(registry.model_store(cfg, model))
    with connect(cfg, read_only=True) as con:
        rows = con.execute(
            """
            select channel, version, value, n_users from retrieval_eval
            where day = ? and segment = ? and k = ? and metric = 'recall'
              and (channel = ? or (channel = ? and version = ''))
            """,
            [day, ALL, k, model, BASELINE],
        ).df()

    def recall(channel: str, version: str) -> float | None:
        hit = rows[(rows.channel == channel) & (rows.version == version)]
        return float(hit.value.iloc[0]) if len(hit) else None

    current_recall = recall(model, current.name) if current else None
    candidate_rows = rows[(rows.channel == model) & (rows.version == candidate)]
    return {
        "day": day, "model": model, "candidate": candidate, "current": current.name if current else None, "k": k,
        "candidate_recall": recall(model, candidate),
        "current_recall": current_recall,
        "recall_floor": (current_recall or 0.0) * (1 - cfg.evaluation.max_recall_drop),
        "popularity_recall": recall(BASELINE, ""),
        "n_users": int(candidate_rows.n_users.iloc[0]) if len(candidate_rows) else 0,
    }


def gate(cfg: PlatformConfig, model: str, candidate: str, ds: dt.date) -> dict[str, Any]:
    """Run the GX gate on the candidate's evaluation; record it in `model_gate` and the version's
    meta; on failure raise the data-quality alert, then ModelRejected."""
    row = _gate_row(cfg, model, candidate, ds)
    frame = pd.DataFrame([row]).astype({"candidate_recall": float, "popularity_recall": float})
    outcome = validate_frame(frame, "model_gate", model_gate_expectations())
    failed = [f["expectation"] for f in outcome.failed]
    row |= {"passed": outcome.success, "failed_expectations": ", ".join(failed)}
    _record_gate(cfg, row)
    store = registry.model_store(cfg, model)
    artifacts.annotate(store, candidate, {"evaluation": {k: row[k] for k in (
        "day", "k", "candidate_recall", "current_recall", "recall_floor", "popularity_recall", "n_users", "passed")}})
    if not outcome.success:
        alert_failure(cfg, outcome, source="nightly_training.gate", title=f"{model} version {candidate} rejected",
                      details={k: row[k] for k in ("day", "current", "candidate_recall", "current_recall",
                                                      "recall_floor", "popularity_recall")})
        raise ModelRejected(f"{model} {candidate} failed its gate on {row['day']}: {', '.join(failed)} "
                            f"(recall@{row['k']} {row['candidate_recall']}, floor {row['recall_floor']:.5f}, "
                            f"popularity {row['popularity_recall']}); {row['current'] or 'no version'} stays current")
    return {k: (str(v) if isinstance(v, dt.date) else v) for k, v in row.items()}


def _record_gate(cfg: PlatformConfig, row: dict[str, Any]) -> None:
    replace_rows(cfg, "model_gate", pd.DataFrame([row]).replace({np.nan: None}), ["day", "model", "candidate"],
                 columns="day date, model varchar, candidate varchar, current varchar, k integer, "
                         "candidate_recall double, current_recall double, recall_floor double, "
                         "popularity_recall double, n_users bigint, passed boolean, failed_expectations varchar, "
                         "checked_at timestamp", stamp="checked_at")
def publish(cfg: PlatformConfig, model: str, candidate: str) -> dict[str, Any]:
    """Make the gated candidate current (atomic pointer switch) and prune old versions."""
    store = registry.model_store(cfg, model)
    version = artifacts.load(store, candidate)
    if not version.meta.get("evaluation", {}).get("passed"):
        raise ModelRejected(f"{model} {candidate} has not passed its gate: not published")
    artifacts.switch(store, candidate)
    pruned = artifacts.prune(store, cfg.retrieval.versions_kept)
    log.info("%s: %s is current (training window %s); pruned %d old version(s)",
             model, candidate, version.meta["training_window"], len(pruned))
    return {"model": model, "version": candidate, "training_window": version.meta["training_window"]}
