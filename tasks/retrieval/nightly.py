"""Nightly training of the registry models (docs/METHODS.md "Nightly retrieval gate and publish"): train -> evaluate -> gate -> publish.

With the data complete through day `ds`, each model of `retrieval.nightly_models` gets a candidate
version trained through ds - 1 (two-tower: aged, warm-started from the current version; ItemCF /
Swing: the window's neighbour table), not yet current. The candidate, the current version and
the popularity baseline are then scored on the clicks of `ds` (tasks/retrieval/evaluate.py, rows in
`retrieval_eval` under their version names, each user's Recall@K of both versions in
`retrieval_eval_users`). The gate compares the versions paired over the same users: the relative
drop of the candidate's Recall@K (K = evaluation.k[0]) and its bootstrap CI over users
(`evaluation.gate_bootstrap` resamples, level 1 - `evaluation.gate_alpha`, seeded); the candidate is
rejected only if the CI's lower bound exceeds `evaluation.max_recall_drop` (a drop beyond noise
and larger than the smallest drop that matters; on a night of served clicks,
`evaluation.max_recall_drop_served`: the current version helped choose what was shown, so its
recall on those clicks is inflated by the feedback, and only a larger drop, a broken candidate's,
is evidence). That rule is the GX suite's (expectations/retrieval.py)
`recall_floor`: the current recall x (1 - max_recall_drop - (drop - CI low)), i.e. widened by the
noise margin; the candidate must also beat popularity. Each gate is a row of `model_gate`. A failed gate raises a data-quality alert listing the failed expectations
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
from tasks.core.config import ALL, EvaluationConfig, PlatformConfig
from tasks.core.eval_metrics import bootstrap_ci
from tasks.core.warehouse import connect, replace_rows
from tasks.ops.alerts import DataQualityRejected
from tasks.retrieval import i2i
from tasks.retrieval import two_tower as train_two_tower
from tasks.retrieval.data import connect_read
from tasks.retrieval.evaluate import (
    UNCHOSEN,
    EvalData,
    few_users_warning,
    load_eval_data,
    popularity,
    score_retrieved,
    unchosen_recall,
    user_recall_rows,
    write_results,
    write_user_recall,
)

log = logging.getLogger(__name__)
BASELINE = "popularity"
INCONCLUSIVE = "too few unchosen"  # model_gate.baseline_clicks when the comparison with popularity is skipped


class ModelRejected(DataQualityRejected):
    """A candidate version failed its evaluation gate."""


@dataclass(frozen=True)
class PairedDrop:
    """The relative Recall drop of a candidate vs the current version over the same users, and its CI."""

    drop: float  # 1 - mean(candidate) / mean(current)
    low: float
    high: float
    n_users: int


def relative_drop(candidate_mean: np.ndarray | float, current_mean: np.ndarray | float) -> np.ndarray:
    """1 - candidate / current (0 where the current mean is 0: nothing to lose)."""
    candidate_mean, current_mean = np.asarray(candidate_mean, np.float64), np.asarray(current_mean, np.float64)
    ratio = np.divide(candidate_mean, current_mean, out=np.ones_like(current_mean), where=current_mean > 0)
    return 1 - ratio


def paired_drop_ci(candidate: np.ndarray, current: np.ndarray, resamples: int, alpha: float, seed: int) -> PairedDrop:
    """Percentile bootstrap CI (two-sided, 1 - alpha) of the relative drop of mean(candidate) vs
    mean(current), resampling users with replacement (both versions' recall of a user move together)."""
    candidate, current = np.asarray(candidate, np.float64), np.asarray(current, np.float64)
    n = len(current)
    if n == 0 or len(candidate) != n:
        raise ValueError(f"paired comparison needs the same users on both sides: {len(candidate)} vs {n}")
    low, high = bootstrap_ci(np.column_stack([candidate, current]), resamples, alpha, seed,
                             statistic=lambda means: relative_drop(means[:, 0], means[:, 1]))
    return PairedDrop(float(relative_drop(candidate.mean(), current.mean())), float(low), float(high), n)


def verdict(paired: PairedDrop, max_drop: float) -> str:
    """Why the recall comparison passes or fails: it fails only on a drop whose CI lies above `max_drop`."""
    if paired.low > max_drop:
        return f"drop beyond noise and above max_recall_drop {max_drop:.1%}"
    if paired.low > 0:
        return f"drop beyond noise but below max_recall_drop {max_drop:.1%}"
    return "gain beyond noise" if paired.high < 0 else "within noise"


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
    into `retrieval_eval` (the versions' per-user Recall@K into `retrieval_eval_users`); return Recall@K of each."""
    store = registry.model_store(cfg, model)
    data = load_eval_data(cfg, training_day(ds))
    ks = tuple(cfg.evaluation.k)
    versions = {candidate: artifacts.load(store, candidate)}
    current = artifacts.current(store)
    if current and current.name != candidate:
        versions[current.name] = current
    baseline = popularity(cfg, data).retrieve(data.users, max(ks))
    frames, per_user = [score_retrieved(data, baseline, cfg.evaluation, BASELINE)], []
    if data.served_clicks:
        frames.append(unchosen_recall(data, baseline, cfg.evaluation, BASELINE))
    for name, version in versions.items():
        retrieved = NIGHTLY_MODELS[model].retriever(cfg, version, data).retrieve(data.users, max(ks))
        frames.append(score_retrieved(data, retrieved, cfg.evaluation, model, name))
        if data.served_clicks:
            frames.append(unchosen_recall(data, retrieved, cfg.evaluation, model, name))
        per_user.append(user_recall_rows(data, retrieved, ks[0], model, name))
    results = pd.concat(frames, ignore_index=True)
    if warning := few_users_warning(results, cfg.evaluation.min_users):
        log.warning("%s evaluation on %s: %s", model, ds, warning)
    write_results(cfg, results)
    write_user_recall(cfg, pd.concat(per_user, ignore_index=True))
    recall = results[(results.segment == ALL) & (results.k == ks[0]) & (results.metric == "recall")]
    summary = {"day": str(data.day), "k": ks[0], "users": len(data.users),
               **{f"recall_{r.version or r.channel}": round(r.value, 5) for r in recall.itertuples()}}
    log.info("%s evaluation on %s: %s", model, ds, summary)
    return summary


def _paired_recall(cfg: PlatformConfig, model: str, candidate: str, current: str, day: dt.date, k: int) -> pd.DataFrame:
    """Per user evaluated on `day`: the candidate's and the current version's Recall@k."""
    with connect(cfg, read_only=True) as con:
        pairs = con.execute(
            """
            select user_id, c.recall as candidate, p.recall as current
            from retrieval_eval_users c join retrieval_eval_users p using (day, channel, k, user_id)
            where day = ? and channel = ? and k = ? and c.version = ? and p.version = ?
            order by user_id
            """,
            [day, model, k, candidate, current],
        ).df()
    if pairs.empty:
        raise ValueError(f"{model}: no per-user recall of {candidate} and {current} on {day} in retrieval_eval_users "
                         "(run the evaluation first)")
    return pairs


def _gate_row(cfg: PlatformConfig, model: str, candidate: str, ds: dt.date) -> dict[str, Any]:
    """The gate's inputs, read back from retrieval_eval and retrieval_eval_users (the tables are what is gated)."""
    ev, day, k = cfg.evaluation, training_day(ds), cfg.evaluation.k[0]
    current = artifacts.current(registry.model_store(cfg, model))
    with connect(cfg, read_only=True) as con:
        rows = con.execute(
            """
            select channel, version, metric, value, n_users from retrieval_eval
            where day = ? and eval_days = 1 and train_window_days = ? and segment = ? and k = ?
              and metric in ('recall', ?) and (channel = ? or (channel = ? and version = ''))
            """,
            [day, cfg.retrieval.train_window_days, ALL, k, UNCHOSEN, model, BASELINE],
        ).df()

    def value(channel: str, version: str, metric: str = "recall", column: str = "value") -> Any:
        hit = rows[(rows.channel == channel) & (rows.version == version) & (rows.metric == metric)]
        return hit[column].iloc[0].item() if len(hit) else None

    row = {
        "day": day, "model": model, "candidate": candidate, "current": current.name if current else None, "k": k,
        "candidate_recall": value(model, candidate), "current_recall": None,
        "recall_drop": None, "drop_ci_low": None, "drop_ci_high": None, "recall_floor": 0.0,
        "n_users": value(model, candidate, column="n_users") or 0,
        **_baseline(ev, value, model, candidate, has_current=current is not None),
        "gate_reason": "first version: no current version to compare with",
    }
    if current:
        pairs = _paired_recall(cfg, model, candidate, current.name, day, k)
        paired = paired_drop_ci(pairs.candidate.to_numpy(), pairs.current.to_numpy(), ev.gate_bootstrap, ev.gate_alpha,
                                ev.gate_seed)
        current_recall = float(pairs.current.mean())
        # a night with served clicks (the unchosen-click recall exists only then): the current version chose them
        served = value(model, candidate, UNCHOSEN, "n_users") is not None
        max_drop = ev.max_recall_drop_served if served else ev.max_recall_drop
        # candidate_recall >= floor  <=>  drop_ci_low <= max_drop
        floor = current_recall * (1 - max_drop - (paired.drop - paired.low))
        row |= {"current_recall": current_recall, "recall_drop": paired.drop, "drop_ci_low": paired.low,
                "drop_ci_high": paired.high, "recall_floor": max(floor, 0.0), "n_users": paired.n_users,
                "gate_reason": verdict(paired, max_drop)}
    if row["baseline_clicks"] == INCONCLUSIVE:
        row["gate_reason"] += (f"; popularity comparison skipped: {row['baseline_users']} users with clicks no model "
                               f"chose (< min_users {ev.min_users})")
    return row


def _baseline(ev: EvaluationConfig, value: Callable[..., Any], model: str, candidate: str,
              has_current: bool) -> dict[str, Any]:
    """The clicks the comparison with popularity is made on, and both recalls there. A night whose
    clicks include some on exposures a model chose (the closed loop) compares on the others, the
    clicks no model chose; with fewer than min_users users having one, the comparison is skipped
    (recalls None) when a current version vouches for the model, else made on all clicks (where the
    feedback favours popularity: a first version must beat it all the same)."""
    users = value(model, candidate, UNCHOSEN, "n_users")
    if users is None or (users < ev.min_users and not has_current):
        return {"baseline_clicks": "all", "candidate_baseline_recall": value(model, candidate),
                "popularity_recall": value(BASELINE, ""), "baseline_users": value(model, candidate, column="n_users")}
    if users < ev.min_users:
        return {"baseline_clicks": INCONCLUSIVE, "candidate_baseline_recall": None, "popularity_recall": None,
                "baseline_users": users}
    return {"baseline_clicks": "unchosen", "candidate_baseline_recall": value(model, candidate, UNCHOSEN),
            "popularity_recall": value(BASELINE, "", UNCHOSEN), "baseline_users": users}


def describe_gate(row: dict[str, Any]) -> str:
    """The gate's numbers in one line, e.g. "Recall@50 0.281 vs 0.296, drop 5.1% [CI -1.2%, 11.0%] over 812 users: within noise"."""
    recall = f"Recall@{row['k']} {row['candidate_recall'] or 0:.3f}"
    if row["current_recall"] is None:
        return f"{recall} over {row['n_users']} users: {row['gate_reason']}"
    return (f"{recall} vs {row['current_recall']:.3f}, drop {row['recall_drop']:.1%} "
            f"[CI {row['drop_ci_low']:.1%}, {row['drop_ci_high']:.1%}] over {row['n_users']} users: {row['gate_reason']}")


def gate(cfg: PlatformConfig, model: str, candidate: str, ds: dt.date) -> dict[str, Any]:
    """Run the GX gate on the candidate's evaluation; record it in `model_gate` and the version's
    meta; on failure raise the data-quality alert, then ModelRejected (not retried: the alert is the
    failure's one alert)."""
    row = _gate_row(cfg, model, candidate, ds)
    frame = pd.DataFrame([row]).astype({"candidate_recall": float, "candidate_baseline_recall": float,
                                        "popularity_recall": float})
    outcome = validate_frame(frame, "model_gate", model_gate_expectations())
    failed = [f["expectation"] for f in outcome.failed]
    row |= {"passed": outcome.success, "failed_expectations": ", ".join(failed)}
    _record_gate(cfg, row)
    store = registry.model_store(cfg, model)
    artifacts.annotate(store, candidate, {"evaluation": {k: row[k] for k in (
        "day", "k", "candidate_recall", "current_recall", "recall_drop", "drop_ci_low", "drop_ci_high", "recall_floor",
        "popularity_recall", "baseline_clicks", "candidate_baseline_recall", "baseline_users", "n_users", "gate_reason",
        "passed")}})
    summary = describe_gate(row)
    if not outcome.success:
        kept = (f"{row['current']} stays current" if row["current"]
                else f"no previous version: {model} has none yet")
        alert_failure(cfg, outcome, source="nightly_training.gate", title=f"{model} version {candidate} rejected; {kept}",
                      details={"summary": summary, **{k: row[k] for k in (
                          "day", "current", "candidate_recall", "current_recall", "recall_drop", "drop_ci_low",
                          "drop_ci_high", "n_users", "recall_floor", "popularity_recall", "gate_reason")}})
        raise ModelRejected(f"{model} {candidate} failed its gate on {row['day']}: {', '.join(failed)} ({summary}; "
                            f"floor {row['recall_floor']:.5f}, popularity {row['popularity_recall']}); "
                            f"{kept}")
    log.info("%s %s passed its gate on %s: %s", model, candidate, row["day"], summary)
    return {k: (str(v) if isinstance(v, dt.date) else v) for k, v in row.items()}


def _record_gate(cfg: PlatformConfig, row: dict[str, Any]) -> None:
    replace_rows(cfg, "model_gate", pd.DataFrame([row]).replace({np.nan: None}), ["day", "model", "candidate"],
                 columns="day date, model varchar, candidate varchar, current varchar, k integer, "
                         "candidate_recall double, current_recall double, recall_drop double, drop_ci_low double, "
                         "drop_ci_high double, recall_floor double, popularity_recall double, n_users bigint, "
                         "baseline_clicks varchar, candidate_baseline_recall double, baseline_users bigint, "
                         "gate_reason varchar, passed boolean, failed_expectations varchar, checked_at timestamp",
                 stamp="checked_at")


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
