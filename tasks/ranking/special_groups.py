"""Models for special user groups next to the full ranker (docs/METHODS.md "Special user groups"), trained on the exposures
of those groups with the full ranker frozen, and their per-segment calibration report.

- Residual model (registry model "residual_new_low"): trained only on the exposures of users in
  `residual_segments` (default: new_users, low_activity) over the `days` days ending on `day`;
  final logit = full-ranker logit + residual output, on the heads it was trained for, for the
  users of those segments; binary cross-entropy on the combined logit (models/ranking/special_groups.py).
- GBDT calibrator (registry model "calibrator_<segment>"): per head, scikit-learn's
  HistGradientBoostingClassifier on the exposures of `calibrated_segment`, from (full-ranker
  logit, cheap features) to the label, monotone in the logit; applied to that segment only.
  Stored in skops' format (no pickle); loading accepts only the tree type it needs.
- Evaluation on a later day, per (head, segment): expected calibration error (equal-frequency
  bins), mean prediction / observed rate, AUC, examples and positives, for the full ranker alone,
  with the residual model and with the calibrator; rows in the warehouse table
  `special_groups_eval` (a day's rows replaced in one transaction).

Heads: the configured ones (default every RANKING_HEAD) that have at least `min_positives`
positives in a model's training rows. Segment memberships are dbt's int_user_day_segments of the
exposure's day; the exposures must have been built (tasks.ranking.data.build_exposures).

The full ranker's logits on the training days are in-sample when its training window covers them
(meta `full_in_sample`): a small model then learns the corrections of fitted predictions, not of
served ones; the evaluation day must lie after every training window to be honest.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.ensemble import HistGradientBoostingClassifier

from models.common.tables import Catalogue, Exposures, UserTable
from models.ranking.features import ranking_features
from models.ranking.full import load_model
from models.ranking.special_groups import (
    CALIBRATOR_CATEGORICAL,
    CALIBRATOR_COLUMNS,
    CALIBRATOR_MONOTONE,
    CALIBRATOR_SPEC,
    CHEAP_COLUMNS,
    CheapFeatures,
    ResidualArchitecture,
    ResidualModel,
    calibrator_inputs,
    cheap_features,
    load_gbdt,
    load_residual,
    residual_inputs,
    residual_output,
    save_gbdt,
    save_residual,
)
from tasks.core import artifacts, registry
from tasks.core.config import ALL, RANKING_HEADS, PlatformConfig, SpecialGroupsConfig
from tasks.core.eval_metrics import auc, bootstrap_ci
from tasks.core.warehouse import replace_rows
from tasks.ranking.data import load_exposures, user_segments
from tasks.ranking.full import load_sources
from tasks.retrieval.data import connect_read

log = logging.getLogger(__name__)
RESIDUAL_MODEL = "residual_new_low"
EVAL_TABLE = "special_groups_eval"
COLUMNS = ("day", "head", "segment", "model", "ece", "ratio", "auc", "n", "positives")
FULL, RESIDUAL, CALIBRATED = "full", "full+residual", "full+calibrator"


def settings_of(cfg: PlatformConfig) -> SpecialGroupsConfig:
    """The config section `ranking.special_groups` (segments validated with the config)."""
    return cfg.ranking.special_groups


def calibrator_store(cfg: PlatformConfig, segment: str) -> Path:
    return registry.model_store(cfg, f"calibrator_{segment}")


def residual_store(cfg: PlatformConfig) -> Path:
    return registry.model_store(cfg, RESIDUAL_MODEL)


# Scoring with the frozen full ranker ------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """Exposures of first..last with the full ranker's logits, cheap-feature sources and segments."""

    exposures: Exposures
    full_logits: np.ndarray  # (n, len(RANKING_HEADS)) float32
    users: UserTable
    catalogue: Catalogue
    segments: dict[str, np.ndarray]  # segment -> (n,) bool: the user is in it on the exposure's day

    def members(self, names: Sequence[str]) -> np.ndarray:
        """Rows whose user is in any of `names` on the exposure's day."""
        mask = np.zeros(len(self.exposures), bool)
        for name in names:
            mask |= self.segments.get(name, np.zeros(len(self.exposures), bool))
        return mask

    def cheap(self, l1_names: Sequence[str]) -> CheapFeatures:
        return cheap_features(self.exposures, self.users, self.catalogue, l1_names)


@torch.no_grad()
def _logits(model, f, block: int = 8192) -> np.ndarray:
    out = [model(*(torch.from_numpy(a[i : i + block]) for a in (f.users, f.items, f.context, f.seq)))
           for i in range(0, len(f), block)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(RANKING_HEADS)), np.float32)


def score_full(cfg: PlatformConfig, full_version: artifacts.Version, first: dt.date, last: dt.date) -> Scored:
    """The exposures of first..last scored by the full ranker (logits; features as its `predict`
    reads them) with their segment memberships."""
    model, vocabs = load_model(full_version.path)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, first, last)
        src = load_sources(con, first, last, cfg.ranking.full.history_days)
        seg = user_segments(con, first, last)
    if not len(exposures):
        raise ValueError(f"special_groups: no ranking_exposures on {first}..{last} (build them first: "
                         "tasks.ranking.data.build_exposures)")
    length = full_version.meta["config"]["full"]["sequence_length"]
    f = ranking_features(vocabs, src.catalogue, src.users, src.clicks, exposures, length)
    keys = pd.MultiIndex.from_arrays([exposures.day.astype("datetime64[D]"), exposures.user_id])
    segments = {}
    for name, group in seg.groupby("segment", sort=True):
        members = pd.MultiIndex.from_arrays([group.day.to_numpy().astype("datetime64[D]"),
                                             group.user_id.to_numpy(np.int64)])
        segments[name] = np.asarray(keys.isin(members))
    return Scored(exposures, _logits(model, f), src.users, src.catalogue, segments)


def _window(day: dt.date, days: int) -> tuple[dt.date, dt.date]:
    if days < 1:
        raise ValueError(f"special_groups: days must be >= 1, got {days}")
    return day - dt.timedelta(days=days - 1), day


def _choose_heads(s: SpecialGroupsConfig, labels: np.ndarray, what: str) -> tuple[int, ...]:
    wanted = s.heads or RANKING_HEADS
    heads = tuple(h for h, name in enumerate(RANKING_HEADS) if name in wanted and labels[:, h].sum() >= s.min_positives)
    if not heads:
        raise ValueError(f"special_groups: {what}: no head among {list(wanted)} has {s.min_positives} positives "
                         f"in {len(labels)} training examples")
    return heads


def _full_meta(full_version: artifacts.Version, first: dt.date, last: dt.date) -> dict:
    f_first, f_last = (dt.date.fromisoformat(d) for d in full_version.meta["training_window"].split(".."))
    return {"full_version": full_version.name, "full_training_window": full_version.meta["training_window"],
            "full_in_sample": bool(f_first <= last and first <= f_last)}


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))


# Training ------------------------------------------------------------------------------------
def fit_residual(model: ResidualModel, x: np.ndarray, full: np.ndarray, y: np.ndarray,
                 s: SpecialGroupsConfig) -> float:
    """Minimise mean BCE(full + model(x), y) + residual_l2 * Σ weights² over the whole set with
    full-batch L-BFGS (deterministic, and it converges where minibatch Adam on these unscaled
    logit inputs did not: the fitted mean prediction then equals the observed rate on the training
    rows, as it must at a logistic optimum); returns the final objective.
    `full` (the frozen full ranker's logits of the model's heads) gets no gradient."""
    xt, ft, yt = torch.from_numpy(x), torch.from_numpy(full), torch.from_numpy(y)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=s.residual_max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def value() -> torch.Tensor:
        penalty = sum((w**2).sum() for w in weights)
        return F.binary_cross_entropy_with_logits(ft + model(xt), yt) + s.residual_l2 * penalty

    def objective() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = value()
        loss.backward()
        return loss

    model.train()
    opt.step(objective)
    model.eval()
    with torch.no_grad():
        return float(value())


def train_residual(cfg: PlatformConfig, day: dt.date, full_version: artifacts.Version, store: Path | None = None,
                   *, days: int | None = None, settings: SpecialGroupsConfig | None = None,
                   make_current: bool = False) -> artifacts.Version:
    """Fit the residual model on the exposures of the residual segments' users over the `days`
    days ending on `day`, the full ranker frozen, and publish it (default store: the registry's
    residual_new_low)."""
    s = settings or settings_of(cfg)
    first, last = _window(day, days or s.days)
    scored = score_full(cfg, full_version, first, last)
    rows = scored.members(s.residual_segments)
    labels = scored.exposures.labels[rows]
    heads = _choose_heads(s, labels, RESIDUAL_MODEL)
    arch = ResidualArchitecture(tuple(scored.catalogue.l1_names), len(RANKING_HEADS), heads, s.residual_hidden)
    x = residual_inputs(arch, scored.cheap(arch.l1_names).select(rows), scored.full_logits[rows])
    full = scored.full_logits[rows][:, list(heads)]
    y = labels[:, list(heads)]
    torch.manual_seed(s.seed)  # the hidden layer's start, when there is one
    model = ResidualModel(arch)
    fit_residual(model, x, full, y, s)
    combined = full + residual_output(model, x)
    meta = {
        "model": RESIDUAL_MODEL, **_full_meta(full_version, first, last),
        "segments": list(s.residual_segments), "heads": [RANKING_HEADS[h] for h in heads],
        "training_window": f"{first}..{last}", "examples": int(rows.sum()),
        "positives": {RANKING_HEADS[h]: int(labels[:, h].sum()) for h in heads},
        "features": [*CHEAP_COLUMNS, "full_logits"], "settings": s.model_dump(mode="json"),
        "train_loss_full": _bce(full, y), "train_loss_combined": _bce(combined, y),
    }
    log.info("%s on %s..%s: %d examples, heads %s, train BCE %.4f -> %.4f", RESIDUAL_MODEL, first, last,
             meta["examples"], meta["heads"], meta["train_loss_full"], meta["train_loss_combined"])
    return artifacts.publish(store or residual_store(cfg), lambda folder: save_residual(folder, model), meta,
                             make_current)


def train_calibrator(cfg: PlatformConfig, day: dt.date, full_version: artifacts.Version, store: Path | None = None,
                     *, days: int | None = None, settings: SpecialGroupsConfig | None = None,
                     make_current: bool = False) -> artifacts.Version:
    """Fit one GBDT per head on the exposures of `calibrated_segment`'s users over the `days` days
    ending on `day`, from (full-ranker logit, cheap features) to the label, and publish them
    (default store: the registry's calibrator_<segment>)."""
    s = settings or settings_of(cfg)
    first, last = _window(day, days or s.days)
    scored = score_full(cfg, full_version, first, last)
    rows = scored.members([s.calibrated_segment])
    name = f"calibrator_{s.calibrated_segment}"
    labels = scored.exposures.labels[rows]
    heads = _choose_heads(s, labels, name)
    l1_names = tuple(scored.catalogue.l1_names)
    cheap = scored.cheap(l1_names).select(rows)
    models, losses = {}, {}
    for h in heads:
        x = calibrator_inputs(cheap, scored.full_logits[rows, h])
        gbdt = HistGradientBoostingClassifier(
            max_iter=s.gbdt_max_iter, learning_rate=s.gbdt_learning_rate, max_leaf_nodes=s.gbdt_max_leaf_nodes,
            min_samples_leaf=s.gbdt_min_samples_leaf, l2_regularization=s.gbdt_l2_regularization,
            categorical_features=list(CALIBRATOR_CATEGORICAL), monotonic_cst=list(CALIBRATOR_MONOTONE),
            early_stopping=False, random_state=s.seed,
        ).fit(x, labels[:, h].astype(np.int64))
        models[RANKING_HEADS[h]] = gbdt
        p = np.clip(gbdt.predict_proba(x)[:, 1], 1e-7, 1 - 1e-7)
        losses[RANKING_HEADS[h]] = (_bce(scored.full_logits[rows, h], labels[:, h]),
                                    _bce(np.log(p / (1 - p)).astype(np.float32), labels[:, h]))

    def write(folder: Path) -> None:
        for head, gbdt in models.items():
            save_gbdt(folder / f"{head}.skops", gbdt)
        (folder / CALIBRATOR_SPEC).write_text(json.dumps(
            {"segment": s.calibrated_segment, "heads": list(models), "l1_names": list(l1_names),
             "columns": list(CALIBRATOR_COLUMNS)}, indent=2))

    meta = {
        "model": name, **_full_meta(full_version, first, last),
        "segment": s.calibrated_segment, "heads": list(models), "training_window": f"{first}..{last}",
        "examples": int(rows.sum()), "positives": {RANKING_HEADS[h]: int(labels[:, h].sum()) for h in heads},
        "features": list(CALIBRATOR_COLUMNS), "format": "skops", "settings": s.model_dump(mode="json"),
        "train_loss_full": {k: v[0] for k, v in losses.items()},
        "train_loss_calibrated": {k: v[1] for k, v in losses.items()},
    }
    log.info("%s on %s..%s: %d examples, heads %s", name, first, last, meta["examples"], meta["heads"])
    return artifacts.publish(store or calibrator_store(cfg, s.calibrated_segment), write, meta, make_current)


# Applying ------------------------------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def logit(p: np.ndarray) -> np.ndarray:
    """The inverse of sigmoid, probabilities clipped to [1e-7, 1 - 1e-7]."""
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q)).astype(np.float32)


def apply_residual(residual: artifacts.Version, scored: Scored) -> np.ndarray:
    """(n, len(RANKING_HEADS)) logits: the full ranker's, plus the residual model's output on its
    heads for the rows of its segments' users (other rows and heads unchanged)."""
    model = load_residual(residual.path)
    rows = scored.members(residual.meta["segments"])
    out = scored.full_logits.copy()
    if rows.any():
        x = residual_inputs(model.arch, scored.cheap(model.arch.l1_names).select(rows), scored.full_logits[rows])
        out[np.ix_(rows, list(model.arch.heads))] += residual_output(model, x)
    return out


def apply_calibrator(calibrator: artifacts.Version, scored: Scored) -> np.ndarray:
    """(n, len(RANKING_HEADS)) probabilities: the full ranker's, replaced by the calibrator's on
    its heads for the rows of its segment's users."""
    spec = json.loads((calibrator.path / CALIBRATOR_SPEC).read_text())
    out = sigmoid(scored.full_logits)
    rows = scored.members([spec["segment"]])
    if rows.any():
        cheap = scored.cheap(spec["l1_names"]).select(rows)
        for head in spec["heads"]:
            h = RANKING_HEADS.index(head)
            gbdt = load_gbdt(calibrator.path / f"{head}.skops")
            out[rows, h] = gbdt.predict_proba(calibrator_inputs(cheap, scored.full_logits[rows, h]))[:, 1]
    return out


# Evaluation ----------------------------------------------------------------------------------
def expected_calibration_error(labels: np.ndarray, pred: np.ndarray, bins: int = 10) -> float:
    """Σ_b (n_b / n) |mean prediction_b − observed rate_b| over `bins` equal-frequency bins of the
    predictions (sorted; sizes differ by at most one); NaN when empty."""
    n = len(labels)
    if not n:
        return float("nan")
    order = np.argsort(pred, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, n)):
        total += len(chunk) * abs(float(pred[chunk].mean()) - float(labels[chunk].mean()))
    return total / n


def _row(day: dt.date, head: str, segment: str, model: str, labels: np.ndarray, pred: np.ndarray, bins: int) -> dict:
    n, positives = len(labels), int(labels.sum())
    return {"day": day, "head": head, "segment": segment, "model": model,
            "ece": expected_calibration_error(labels, pred, bins),
            "ratio": float(pred.mean()) / float(labels.mean()) if positives else float("nan"),
            "auc": auc(labels, pred), "n": n, "positives": positives}


def _corrected(small: artifacts.Version, scored: Scored) -> tuple[str, np.ndarray, list[str], list[str]]:
    """(model label, (n, len(RANKING_HEADS)) probabilities, its heads, its segments) of a residual
    model's or a calibrator's version on `scored`."""
    if small.meta["model"] == RESIDUAL_MODEL:
        return RESIDUAL, sigmoid(apply_residual(small, scored)), small.meta["heads"], list(small.meta["segments"])
    return CALIBRATED, apply_calibrator(small, scored), small.meta["heads"], [small.meta["segment"]]


def evaluate(cfg: PlatformConfig, day: dt.date, full_version: artifacts.Version, residual: artifacts.Version | None,
             calibrator: artifacts.Version | None, settings: SpecialGroupsConfig | None = None,
             scored: Scored | None = None) -> pd.DataFrame:
    """Rows (COLUMNS) for the exposures of `day` (`scored`: score_full of that day, when already
    computed): model 'full' for every head on 'all', each residual segment and the calibrated
    segment; 'full+residual' on its heads, for 'all' and each of its segments; 'full+calibrator' on
    its heads, for 'all' and its segment."""
    s = settings or settings_of(cfg)
    scored = scored or score_full(cfg, full_version, day, day)
    labels, everyone = scored.exposures.labels, np.ones(len(scored.exposures), bool)
    variants = [(FULL, sigmoid(scored.full_logits), list(RANKING_HEADS),
                 [*(residual.meta["segments"] if residual else s.residual_segments),
                  calibrator.meta["segment"] if calibrator else s.calibrated_segment])]
    variants += [_corrected(small, scored) for small in (residual, calibrator) if small is not None]
    rows = []
    for model, pred, heads, segments in variants:
        for head in heads:
            h = RANKING_HEADS.index(head)
            for segment in [ALL, *dict.fromkeys(segments)]:
                mask = everyone if segment == ALL else scored.members([segment])
                rows.append(_row(day, head, segment, model, labels[mask, h], pred[mask, h], s.ece_bins))
    return pd.DataFrame(rows, columns=list(COLUMNS))


@dataclass(frozen=True)
class Judgement:
    """A small model against the full ranker alone on a held-out day, over its segments' exposures
    and its heads: mean log loss of each, the paired difference's CI over users, the decision."""

    model: str  # the registry model (residual_new_low, calibrator_<segment>)
    version: str
    n_users: int
    n: int  # (exposure, head) cells judged
    loss_full: float
    loss_model: float
    low: float  # CI of loss_model - loss_full
    high: float
    keep: bool  # high < 0: the model lowers the log loss beyond day-to-day noise


def _log_loss(labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def judge(cfg: PlatformConfig, small: artifacts.Version, scored: Scored) -> Judgement:
    """Whether `small` (a residual model's or a calibrator's version) beats the full ranker on the
    held-out exposures in `scored`: the mean log loss over its segments' rows and its heads, with
    and without it; kept only if the upper end of the paired percentile bootstrap CI over users
    (evaluation.gate_bootstrap resamples, two-sided 1 - gate_alpha) of the difference is below 0."""
    e = cfg.evaluation
    _, pred, heads, segments = _corrected(small, scored)
    rows = scored.members(segments)
    cols = [RANKING_HEADS.index(h) for h in heads]
    labels = scored.exposures.labels[rows][:, cols].astype(np.float64)
    full = _log_loss(labels, sigmoid(scored.full_logits[rows][:, cols])).sum(axis=1)
    model = _log_loss(labels, pred[rows][:, cols]).sum(axis=1)
    if not len(full):
        raise ValueError(f"special_groups: no exposures of {segments} to judge {small.meta['model']} on")
    per_user = pd.DataFrame({"user": scored.exposures.user_id[rows], "diff": model - full, "cells": len(cols)}
                            ).groupby("user")[["diff", "cells"]].sum().to_numpy(np.float64)
    low, high = bootstrap_ci(per_user, e.gate_bootstrap, e.gate_alpha, e.gate_seed,
                             statistic=lambda means: means[:, 0] / means[:, 1])
    cells = full.size * len(cols)
    return Judgement(small.meta["model"], small.name, len(per_user), int(cells), float(full.sum() / cells),
                     float(model.sum() / cells), float(low), float(high), bool(high < 0))


def keep_if_better(cfg: PlatformConfig, small: artifacts.Version, scored: Scored) -> Judgement:
    """`judge`, its result in the version's meta (`judgement`), and the version made current only
    if kept (a rejected one leaves the store's current version as it was)."""
    verdict = judge(cfg, small, scored)
    artifacts.annotate(small.store, small.name, {"judgement": asdict(verdict)})
    if verdict.keep:
        artifacts.switch(small.store, small.name)
    return verdict


def write_eval(cfg: PlatformConfig, frame: pd.DataFrame) -> None:
    """Store rows in `special_groups_eval`, replacing those of the frame's days, in one transaction."""
    rows = frame[list(COLUMNS)].assign(day=pd.to_datetime(frame["day"]).dt.date)
    replace_rows(cfg, EVAL_TABLE, rows, ["day"],
                 columns="day date, head varchar, segment varchar, model varchar, ece double, ratio double, "
                         "auc double, n bigint, positives bigint, evaluated_at timestamp", stamp="evaluated_at")
