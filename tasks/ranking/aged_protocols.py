"""The aged ("old soup") model protocols of docs/METHODS.md "Aged-model protocols" for the full ranker.

The production full ranker trains 1 epoch per day on new data (tasks/ranking/full.py) and
becomes hard to beat: a new architecture trained from scratch loses to it for reasons that have
nothing to do with the architecture. Two protocols, both evaluated on `day` after training on the
`days` days before it (day - days .. day - 1), 1 epoch, days oldest first, shuffled within a day
(tasks.ranking.full.fit):

- `compare` ranks architectures: the current architecture (ranking.full) and a candidate (the
  current one with `candidate` overrides of embedding_dim, experts, expert_hidden, tower_hidden,
  interaction, match_counts, sequence_length) trained from the same start: dense layers random from
  the same seed (identical wherever the shapes agree, whatever the vocabulary sizes), embeddings
  random from the same seed (`embeddings="random"`, vocabularies over the window as a cold start builds them) or reused from
  the aged model (`"reuse"`: the registry's current full_ranking version; its vocabularies
  extended by the window's new ids, its rows copied where the embedding width matches, new rows
  random). The winner is the arm with the higher mean AUC on `day`. The aged model's own AUC is
  recorded beside them for reference (when it was trained before `day`); it does not compete.
- `catch_up` tries to catch up with the aged model: the candidate architecture starts from the
  aged model's embeddings (where the width matches), dense layers random, and is distilled from
  it: targets (y + p_old) / 2 per head, p_old the aged model's predictions on the training
  exposures (fit takes soft targets as labels: binary cross-entropy with logits). It is compared
  with the aged model on `day`.

Every head's AUC on `day` (and `fusion`: the fusion score sum_k w_k p_k of ranking.full.fusion_weights
against "any head positive"; not part of the mean) goes to the warehouse table
`architecture_comparison`; a re-run of a (day, protocol) replaces its rows. The winner is decided
by the mean AUC over the heads with at least `min_positives` positives on `day`.

Trained arms are published to a throwaway store (`experiment_store`: <artifacts>/experiments/
architecture_comparison/<protocol>/<arm>, never current, the newest `keep_versions` kept), never
to the model registry; the aged model is only read.

Settings: the config section ranking.architecture_comparison (`days`, the default window;
`min_positives`; `keep_versions`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.common.features import build_vocabs
from models.common.tables import Exposures
from models.common.vocab import KINDS, Vocab
from models.ranking.features import RankingFeatures, ranking_features
from models.ranking.full import Architecture, FullRanking, load_model, predict_proba, save_model
from tasks.core import artifacts, registry
from tasks.core.config import (
    ARCHITECTURE_KEYS,
    EMBEDDINGS,
    EMBEDDINGS_DEFAULT,
    PROTOCOLS,
    RANKING_HEADS,
    FullRankingConfig,
    PlatformConfig,
)
from tasks.core.eval_metrics import auc
from tasks.core.storage import Location
from tasks.core.warehouse import replace_rows
from tasks.ranking.data import TABLE as EXPOSURES_TABLE
from tasks.ranking.data import build_exposures, load_exposures
from tasks.ranking.full import MODEL as FULL_RANKING
from tasks.ranking.full import Sources, architecture, fit, load_sources
from tasks.retrieval.data import connect_read

log = logging.getLogger(__name__)

TABLE = "architecture_comparison"
FUSION = "fusion"  # the head name of the fusion score's row
COLUMNS = ("day", "protocol", "arm", "head", "auc", "n", "positives", "days", "embeddings", "candidate_overrides",
           "architecture", "embeddings_reused", "version", "aged_version")


def experiment_store(cfg: PlatformConfig) -> Location:
    """The throwaway store of the trained arms (outside the model registry)."""
    return cfg.artifacts_dir / "experiments" / TABLE


def candidate_config(fr: FullRankingConfig, overrides: Mapping[str, Any] | None) -> FullRankingConfig:
    """The full ranker's settings with architecture overrides, validated as the config is."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(ARCHITECTURE_KEYS)
    if unknown:
        raise ValueError(f"architecture_comparison: unknown candidate settings {sorted(unknown)}; "
                         f"allowed: {', '.join(ARCHITECTURE_KEYS)}")
    return FullRankingConfig.model_validate({**fr.model_dump(), **overrides})


def _settings(fr: FullRankingConfig) -> dict[str, int | bool]:
    return {k: getattr(fr, k) for k in ARCHITECTURE_KEYS}


def start_model(arch: Architecture, seed: int, aged: FullRanking | None = None,
                aged_vocabs: Mapping[str, Vocab] | None = None,
                vocabs: Mapping[str, Vocab] | None = None) -> tuple[FullRanking, bool]:
    """The common start of an arm: (model, whether the aged embeddings were copied).

    Dense layers are drawn from `seed` by a model whose embedding tables have one row, so they do
    not depend on the vocabulary sizes: two arms of the same architecture start identical, and
    arms of different architectures share every layer whose shape agrees up to the first that
    does not (construction order). Embeddings are drawn from `seed` + 1; with `aged` (and its
    vocabularies, of which `vocabs` must be an extension) of the same width, its rows are copied
    over them (every table: ids and context), the rows of new ids stay random."""
    torch.manual_seed(seed)
    dense = FullRanking(replace(arch, sizes={k: 1 for k in arch.sizes}))
    torch.manual_seed(seed + 1)
    model = FullRanking(arch)
    state = model.state_dict()
    for key, value in dense.state_dict().items():
        if not key.startswith("emb."):
            state[key] = value.clone()
    reused = aged is not None and aged.arch.dim == arch.dim
    if reused:
        if aged_vocabs is None or vocabs is None:
            raise ValueError("start_model: reusing embeddings needs the aged and the new vocabularies")
        for kind in KINDS:
            if not np.array_equal(vocabs[kind].ids[: len(aged_vocabs[kind].ids)], aged_vocabs[kind].ids):
                raise ValueError(f"vocabulary {kind!r} is not an extension of the aged model's")
        for key, value in aged.state_dict().items():
            if key.startswith("emb."):
                state[key][: len(value)] = value
    model.load_state_dict(state)
    return model, reused


def distillation_targets(labels: np.ndarray, p_old: np.ndarray) -> np.ndarray:
    """(y + p_old) / 2 per example and head (docs/METHODS.md "Aged-model protocols", pointwise distillation)."""
    if labels.shape != p_old.shape:
        raise ValueError(f"labels {labels.shape} and teacher predictions {p_old.shape} differ in shape")
    if not np.isfinite(p_old).all():
        raise ValueError("the aged model's predictions hold non-finite values")
    return ((labels + p_old) / 2).astype(np.float32)


@dataclass(frozen=True)
class _Data:
    window: tuple[dt.date, dt.date]
    train: Exposures
    train_src: Sources
    evaluation: Exposures
    eval_src: Sources


def _window(day: dt.date, days: int) -> tuple[dt.date, dt.date]:
    if days < 1:
        raise ValueError(f"architecture_comparison: days must be at least 1, got {days}")
    return day - dt.timedelta(days=days), day - dt.timedelta(days=1)


def _days(cfg: PlatformConfig, days: int | None) -> int:
    """`days`, or the configured default (ranking.architecture_comparison.days)."""
    return cfg.ranking.architecture_comparison.days if days is None else days


def _load(cfg: PlatformConfig, day: dt.date, days: int) -> _Data:
    first, last = _window(day, days)
    history_days = cfg.ranking.full.history_days
    with connect_read(cfg) as con:
        train, evaluation = load_exposures(con, first, last), load_exposures(con, day, day)
        train_src, eval_src = load_sources(con, first, last, history_days), load_sources(con, day, day, history_days)
    present = set(np.unique(train.day).astype(dt.date))
    missing = [first + dt.timedelta(days=i) for i in range(days) if first + dt.timedelta(days=i) not in present]
    if missing or not len(evaluation):
        raise ValueError(f"architecture_comparison: no ranking_exposures on "
                         f"{', '.join(map(str, missing + ([] if len(evaluation) else [day])))} "
                         "(build them first: ensure_exposures / tasks.ranking.data.build_exposures)")
    return _Data((first, last), train, train_src, evaluation, eval_src)


def _features(vocabs: Mapping[str, Vocab], src: Sources, exposures: Exposures, length: int) -> RankingFeatures:
    return ranking_features(vocabs, src.catalogue, src.users, src.clicks, exposures, length)


def _aged(cfg: PlatformConfig, day: dt.date, required: bool) -> artifacts.Version | None:
    """The registry's current full ranker, if trained before `day` (its embeddings must not have
    seen the evaluation day)."""
    store = registry.model_store(cfg, FULL_RANKING)
    version = artifacts.current(store)
    if version is None:
        if required:
            raise artifacts.ArtifactError(f"{store}: no current full_ranking version (the aged model)")
        return None
    last = registry.trained_through(version)
    if last >= day:
        if required:
            raise ValueError(f"architecture_comparison: the aged model {version.name} was trained through {last}; "
                             f"it cannot be reused or compared on {day} (pick a later day)")
        log.info("architecture_comparison: aged model %s trained through %s, not a reference on %s",
                 version.name, last, day)
        return None
    return version


@dataclass
class _Arm:
    name: str
    fr: FullRankingConfig
    model: FullRanking
    vocabs: Mapping[str, Vocab]
    reused: bool
    version: str


def _train_arm(data: _Data, protocol: str, name: str, fr: FullRankingConfig,
               vocabs: Mapping[str, Vocab], seed: int, day: dt.date, aged: tuple[FullRanking, Mapping[str, Vocab]] | None,
               targets: np.ndarray, store: Path, keep_versions: int, features: dict, meta: dict) -> _Arm:
    """One arm: its start (start_model), 1 epoch on the window towards `targets` (labels, or soft
    distillation targets), published to the throwaway store (never current)."""
    arch = architecture(fr, vocabs)
    model, reused = start_model(arch, seed, *(aged or (None, None)), vocabs=vocabs)
    model.set_priors(targets.mean(axis=0))
    key = (id(vocabs), fr.sequence_length)
    if key not in features:
        features[key] = _features(vocabs, data.train_src, data.train, fr.sequence_length)
    rng = np.random.default_rng([seed, day.toordinal()])
    log.info("architecture_comparison %s %s: %s, embeddings %s, %d examples", protocol, name, _settings(fr),
             "reused" if reused else "random", len(data.train))
    history = fit(model, features[key], replace(data.train, labels=targets), fr, 1, rng)
    arm_store = store / protocol / name
    version = artifacts.publish(arm_store, lambda folder: save_model(folder, model, vocabs), {
        **meta, "model": "full_ranking", "protocol": protocol, "arm": name, "architecture": _settings(fr),
        "config": {"full": fr.model_dump()}, "embeddings_reused": reused, "seed": seed,
        "examples": len(data.train), "target_mean": dict(zip(RANKING_HEADS, map(float, targets.mean(axis=0)))),
        "loss_per_epoch": [h["loss"] for h in history],
    }, make_current=False)
    artifacts.prune(arm_store, keep_versions)
    return _Arm(name, fr, model, vocabs, reused, version.name)


def _evaluate(data: _Data, model: FullRanking, vocabs: Mapping[str, Vocab], length: int,
              fusion_weights: Mapping[str, float]) -> list[dict[str, Any]]:
    """Rows (head, auc, n, positives) of a model on the evaluation day, plus the fusion score's."""
    f = _features(vocabs, data.eval_src, data.evaluation, length)
    p = predict_proba(model, f.users, f.items, f.context, f.seq)
    labels, n = data.evaluation.labels, len(data.evaluation)
    rows = [{"head": h, "auc": auc(labels[:, k], p[:, k]), "n": n, "positives": int(labels[:, k].sum())}
            for k, h in enumerate(RANKING_HEADS)]
    score = p @ np.array([fusion_weights.get(h, 0.0) for h in RANKING_HEADS], dtype=np.float32)
    engaged = labels.max(axis=1)
    rows.append({"head": FUSION, "auc": auc(engaged, score), "n": n, "positives": int(engaged.sum())})
    return rows


def _summary(frame: pd.DataFrame, contenders: tuple[str, str], min_positives: int, extra: dict) -> dict[str, Any]:
    heads = frame[(frame["head"] != FUSION)]
    counted = sorted({h for h, pos, n in zip(heads["head"], heads.positives, heads.n)
                      if min_positives <= pos <= n - min_positives}, key=RANKING_HEADS.index)
    arms: dict[str, Any] = {}
    for arm, rows in frame.groupby("arm", sort=False):
        by_head = dict(zip(rows["head"], rows.auc))
        arms[arm] = {
            "mean_auc": float(np.mean([by_head[h] for h in counted])) if counted else float("nan"),
            "auc": {h: round(float(v), 6) for h, v in by_head.items()},
            "embeddings_reused": bool(rows.embeddings_reused.iloc[0]),
            "version": rows.version.iloc[0],
            "architecture": json.loads(rows.architecture.iloc[0]),
        }
    a, b = contenders
    ma, mb = arms[a]["mean_auc"], arms[b]["mean_auc"]
    winner = None if not counted else (a if ma > mb else b if mb > ma else "tie")
    return {**extra, "heads_compared": counted, "arms": arms, "contenders": list(contenders), "winner": winner,
            "margin": abs(ma - mb) if counted else None}


def _frame(day: dt.date, protocol: str, days: int, embeddings: str, overrides: Mapping[str, Any],
           arms: list[tuple[str, list[dict], dict, bool, str]], aged_version: str | None) -> pd.DataFrame:
    out = []
    for name, rows, settings, reused, version in arms:
        for r in rows:
            out.append({"day": day, "protocol": protocol, "arm": name, **r, "days": days, "embeddings": embeddings,
                        "candidate_overrides": json.dumps(dict(overrides), sort_keys=True),
                        "architecture": json.dumps(settings, sort_keys=True), "embeddings_reused": reused,
                        "version": version, "aged_version": aged_version})
    return pd.DataFrame(out, columns=list(COLUMNS))


def compare(cfg: PlatformConfig, day: dt.date, days: int | None = None, embeddings: str = EMBEDDINGS_DEFAULT,
            candidate: Mapping[str, Any] | None = None, *, seed: int | None = None, store: Path | None = None,
            write: bool = True) -> dict[str, Any]:
    """Protocol `compare` (module doc): train the current and the candidate architecture from the
    same start on the `days` days (default: the configured ones) before `day`, evaluate both on
    `day`; rows into the table (unless write=False); the summary (which arm wins)."""
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"architecture_comparison: embeddings must be one of {EMBEDDINGS}, got {embeddings!r}")
    days, settings = _days(cfg, days), cfg.ranking.architecture_comparison
    fr, overrides = cfg.ranking.full, dict(candidate or {})
    cand_fr = candidate_config(fr, overrides)
    seed, store = fr.seed if seed is None else seed, store or experiment_store(cfg)
    aged_version = _aged(cfg, day, required=embeddings == "reuse")
    data = _load(cfg, day, days)
    aged = load_model(aged_version.path) if aged_version else None
    src = data.train_src
    users = np.unique(data.train.user_id)
    if embeddings == "reuse":
        vocabs = build_vocabs(src.catalogue, src.users, users, aged[1])
    else:
        vocabs = build_vocabs(src.catalogue, src.users, users)
    meta = {"training_window": f"{data.window[0]}..{data.window[1]}", "evaluated_on": str(day),
            "embeddings": embeddings, "candidate_overrides": overrides,
            "aged_version": aged_version.name if aged_version else None}
    features: dict = {}
    arms = []
    for name, arm_fr in (("current", fr), ("candidate", cand_fr)):
        arm = _train_arm(data, "compare", name, arm_fr, vocabs, seed, day,
                         aged if embeddings == "reuse" else None, data.train.labels, store, settings.keep_versions,
                         features, meta)
        rows = _evaluate(data, arm.model, arm.vocabs, arm_fr.sequence_length, fr.fusion_weights)
        arms.append((name, rows, _settings(arm_fr), arm.reused, arm.version))
    if aged_version:  # reference only
        length = aged_version.meta["config"]["full"]["sequence_length"]
        arms.append(("aged", _evaluate(data, aged[0], aged[1], length, fr.fusion_weights),
                     _aged_settings(aged[0], length), True, aged_version.name))
    frame = _frame(day, "compare", days, embeddings, overrides, arms, meta["aged_version"])
    if write:
        write_results(cfg, frame)
    summary = _summary(frame, ("current", "candidate"), settings.min_positives, {
        "protocol": "compare", "day": str(day), "days": days, "training_window": meta["training_window"],
        "embeddings": embeddings, "candidate_overrides": overrides, "aged_version": meta["aged_version"]})
    log.info("architecture_comparison compare on %s: %s", day, _line(summary))
    return summary


def _aged_settings(model: FullRanking, length: int) -> dict[str, int]:
    a = model.arch
    return {"embedding_dim": a.dim, "experts": a.experts, "expert_hidden": a.expert_hidden,
            "tower_hidden": a.tower_hidden, "sequence_length": length}


def teacher_predictions(cfg: PlatformConfig, day: dt.date, days: int | None = None) -> tuple[Exposures, np.ndarray]:
    """The training exposures of the window before `day` and the aged model's predictions on them
    (p_old of the catch-up targets)."""
    aged_version = _aged(cfg, day, required=True)
    data = _load(cfg, day, _days(cfg, days))
    model, vocabs = load_model(aged_version.path)
    return data.train, _teacher(data, model, vocabs, aged_version)


def _teacher(data: _Data, model: FullRanking, vocabs: Mapping[str, Vocab], version: artifacts.Version) -> np.ndarray:
    f = _features(vocabs, data.train_src, data.train, version.meta["config"]["full"]["sequence_length"])
    return predict_proba(model, f.users, f.items, f.context, f.seq)


def catch_up(cfg: PlatformConfig, day: dt.date, days: int | None = None, candidate: Mapping[str, Any] | None = None,
             *, seed: int | None = None, store: Path | None = None, write: bool = True) -> dict[str, Any]:
    """Protocol `catch_up` (module doc): the candidate architecture, embeddings reused from the
    aged model where the width matches, distilled from it ((y + p_old) / 2) on the `days` days
    (default: the configured ones) before `day`, against the aged model on `day`; rows into the
    table (unless write=False); the summary (which arm wins)."""
    days, settings = _days(cfg, days), cfg.ranking.architecture_comparison
    fr, overrides = cfg.ranking.full, dict(candidate or {})
    cand_fr = candidate_config(fr, overrides)
    seed, store = fr.seed if seed is None else seed, store or experiment_store(cfg)
    aged_version = _aged(cfg, day, required=True)
    data = _load(cfg, day, days)
    aged_model, aged_vocabs = load_model(aged_version.path)
    targets = distillation_targets(data.train.labels, _teacher(data, aged_model, aged_vocabs, aged_version))
    src = data.train_src
    vocabs = build_vocabs(src.catalogue, src.users, np.unique(data.train.user_id), aged_vocabs)
    meta = {"training_window": f"{data.window[0]}..{data.window[1]}", "evaluated_on": str(day),
            "embeddings": "reuse", "candidate_overrides": overrides, "aged_version": aged_version.name,
            "distilled_from": aged_version.name}
    arm = _train_arm(data, "catch_up", "candidate", cand_fr, vocabs, seed, day, (aged_model, aged_vocabs),
                     targets, store, settings.keep_versions, {}, meta)
    length = aged_version.meta["config"]["full"]["sequence_length"]
    arms = [
        ("candidate", _evaluate(data, arm.model, arm.vocabs, cand_fr.sequence_length, fr.fusion_weights),
         _settings(cand_fr), arm.reused, arm.version),
        ("aged", _evaluate(data, aged_model, aged_vocabs, length, fr.fusion_weights),
         _aged_settings(aged_model, length), True, aged_version.name),
    ]
    frame = _frame(day, "catch_up", days, "reuse", overrides, arms, aged_version.name)
    if write:
        write_results(cfg, frame)
    summary = _summary(frame, ("candidate", "aged"), settings.min_positives, {
        "protocol": "catch_up", "day": str(day), "days": days, "training_window": meta["training_window"],
        "embeddings": "reuse", "candidate_overrides": overrides, "aged_version": aged_version.name})
    log.info("architecture_comparison catch_up on %s: %s", day, _line(summary))
    return summary


def _line(summary: dict[str, Any]) -> str:
    means = ", ".join(f"{a} {v['mean_auc']:.4f}" for a, v in summary["arms"].items())
    return f"mean AUC {means}; winner {summary['winner']}"


def write_results(cfg: PlatformConfig, frame: pd.DataFrame) -> None:
    """Store rows in `architecture_comparison`, replacing those of the same (day, protocol,
    embeddings): a reuse and a random comparison of a day are kept side by side."""
    rows = frame[list(COLUMNS)].assign(evaluated_at=pd.Timestamp.now(tz="UTC").tz_localize(None))
    replace_rows(cfg, TABLE, rows, ["day", "protocol", "embeddings"])


# --- DAG entry points --------------------------------------------------------------------------

def resolve_params(cfg: PlatformConfig, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's settings from DAG params (or a CLI conf): day (required), days (default: the
    configured ones), embeddings, candidate (an object, or its JSON text), protocol; validated."""
    p = dict(params or {})
    if not p.get("day"):
        raise ValueError("architecture_comparison: param 'day' (the evaluation day, YYYY-MM-DD) is required")
    candidate = p.get("candidate") or {}
    if isinstance(candidate, str):
        candidate = json.loads(candidate)
    if not isinstance(candidate, dict):
        raise ValueError(f"architecture_comparison: candidate must be a JSON object, got {candidate!r}")
    protocol = p.get("protocol") or "compare"
    embeddings = p.get("embeddings") or EMBEDDINGS_DEFAULT
    days = _days(cfg, None if p.get("days") is None else int(p["days"]))
    if protocol not in PROTOCOLS:
        raise ValueError(f"architecture_comparison: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"architecture_comparison: embeddings must be one of {EMBEDDINGS}, got {embeddings!r}")
    if days < 1:
        raise ValueError(f"architecture_comparison: days must be at least 1, got {days}")
    candidate_config(FullRankingConfig(), candidate)  # unknown keys / out-of-range values fail here
    return {"day": str(dt.date.fromisoformat(str(p["day"]))), "days": days, "embeddings": embeddings,
            "candidate": candidate, "protocol": protocol}


def ensure_exposures(cfg: PlatformConfig, day: dt.date, days: int | None = None) -> list[str]:
    """Build ranking_exposures (dbt) for the days of the window and `day` that have none; the days built."""
    days = _days(cfg, days)
    first = _window(day, days)[0]
    wanted = [first + dt.timedelta(days=i) for i in range(days + 1)]
    with connect_read(cfg) as con:
        exists = con.execute("select count(*) from information_schema.tables where table_name = ?",
                             [EXPOSURES_TABLE]).fetchone()[0]
        have = {r[0] for r in con.execute(f"select distinct day from {EXPOSURES_TABLE} where day between ? and ?",
                                          [first, day]).fetchall()} if exists else set()
    missing = [d for d in wanted if d not in have]
    if missing:
        build_exposures(cfg, missing[0], missing[-1])
    return [str(d) for d in missing]


def run(cfg: PlatformConfig, settings: Mapping[str, Any]) -> dict[str, Any]:
    """One protocol run from resolved settings (resolve_params); the summary."""
    day = dt.date.fromisoformat(settings["day"])
    if settings["protocol"] == "compare":
        return compare(cfg, day, settings["days"], settings["embeddings"], settings["candidate"])
    return catch_up(cfg, day, settings["days"], settings["candidate"])

