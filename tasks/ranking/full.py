"""Nightly training of the multi-objective full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)") and publishing as a version;
scoring exposures with a version.

Cold start (no current version, or warm_start off): the `first_window_days` days of
ranking_exposures ending on `day`, `first_epochs` epochs, heads' biases started at their base
rates. Aged ("old soup") training: the current version's weights, vocabularies extended by the
new ids, 1 epoch on the days after its training window (`day` alone on a normal night; the missed
days after a gap, at most `first_window_days` of them). Either way each epoch takes the days oldest
first, shuffled within a day; the loss is the mean binary cross-entropy over every head. The
version is published without becoming current unless asked.

The exposures of the days must have been built (tasks.ranking.data.build_exposures). Behaviour
sequences read the clicks of the `history_days` days before the first exposure day onwards.

Version files: weights.pt, vocab.npz, architecture.json (models/ranking/full.py), meta.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import numpy as np
import torch
import torch.nn.functional as F

from models.common import training
from models.common.features import build_vocabs
from models.common.tables import Catalogue, Events, Exposures, UserTable
from models.ranking.features import RankingFeatures, ranking_features
from models.ranking.full import Architecture, FullRanking, extend_model, load_model, predict_proba, save_model, sizes
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, FullRankingConfig, PlatformConfig
from tasks.ranking.data import load_exposures
from tasks.retrieval.data import connect_read, data_hash, load_catalogue, load_events
from tasks.retrieval.two_tower import load_users

log = logging.getLogger(__name__)
MODEL = "full_ranking"


@dataclass(frozen=True)
class Sources:
    """What the features of the exposures of first..last are computed from."""

    catalogue: Catalogue
    users: UserTable
    clicks: Events


def load_sources(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date, history_days: int) -> Sources:
    """Catalogue and users as of `last`; the clicks of the `history_days` days before `first` up to `last`."""
    catalogue = load_catalogue(con, last)
    return Sources(
        catalogue, load_users(con, last),
        load_events(con, catalogue, "click", first - dt.timedelta(days=history_days), last),
    )


def _tensors(f: RankingFeatures, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a[rows]) for a in (f.users, f.items, f.context, f.seq))


def fit(model: FullRanking, features: RankingFeatures, exposures: Exposures, fr: FullRankingConfig, epochs: int,
        rng: np.random.Generator) -> list[dict[str, float]]:
    """Adam over `epochs` epochs (days oldest first, shuffled within a day; models.common.training.fit);
    per epoch: mean loss and examples/s."""
    labels = torch.tensor(exposures.labels)

    def epoch_batches() -> Iterator[np.ndarray]:
        order = np.lexsort((rng.random(len(exposures)), exposures.day))
        return (order[start : start + fr.batch_size] for start in range(0, len(order), fr.batch_size))

    def batch_loss(idx: np.ndarray) -> tuple[torch.Tensor, int]:
        return F.binary_cross_entropy_with_logits(model(*_tensors(features, idx)), labels[idx]), len(idx)

    return training.fit(model, epoch_batches, batch_loss, examples=len(exposures), epochs=epochs,
                        lr=fr.learning_rate, label=MODEL)


def _data_hash(src: Sources, first: dt.date, exposures: Exposures) -> str:
    """sha256 over the clicks the sequences read (tasks.retrieval.data.data_hash) and the examples."""
    h = hashlib.sha256(data_hash(src.catalogue, first, src.clicks).encode())
    for array in (exposures.user_id, exposures.item_id, exposures.shown_us, exposures.position):
        h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(exposures.labels, dtype=np.float32).tobytes())
    return h.hexdigest()


def train(cfg: PlatformConfig, day: dt.date, make_current: bool = False, store: Path | None = None) -> artifacts.Version:
    """Train on the exposures ending on `day` (cold or aged, see the module doc) and publish a
    version in `store` (default: the registry's full_ranking store)."""
    fr, store = cfg.ranking.full, store or registry.model_store(cfg, MODEL)
    window_first = day - dt.timedelta(days=fr.first_window_days - 1)
    parent = artifacts.current(store) if fr.warm_start else None
    parent_last = registry.trained_through(parent) if parent else None
    if parent_last and parent_last >= day:
        raise ValueError(f"full_ranking: current version {parent.name} has training window "
                         f"{parent.meta['training_window']}; aged training needs a later day than {day}")
    if parent_last:  # aged: 1 epoch on the days after the parent's window (one day on a normal night)
        first, epochs = max(parent_last + dt.timedelta(days=1), window_first), 1
    else:
        first, epochs = window_first, fr.first_epochs
    with connect_read(cfg) as con:
        exposures = load_exposures(con, first, day)
        src = load_sources(con, first, day, fr.history_days)
    if not len(exposures):
        raise ValueError(f"full_ranking: no ranking_exposures on {first}..{day} (build them first: "
                         "tasks.ranking.data.build_exposures)")
    torch.manual_seed(fr.seed)
    rng = np.random.default_rng([fr.seed, day.toordinal()])
    arch = Architecture({}, len(RANKING_HEADS), fr.embedding_dim, fr.experts, fr.expert_hidden, fr.tower_hidden)
    if parent:
        old, old_vocabs = load_model(parent.path)
        if replace(old.arch, sizes={}) != arch:
            raise ValueError(f"full_ranking: cannot warm-start {arch} from {parent.name}: "
                             f"{replace(old.arch, sizes={})}")
        vocabs = build_vocabs(src.catalogue, src.users, np.unique(exposures.user_id), old_vocabs)
        model = extend_model(old, old_vocabs, vocabs)
    else:
        vocabs = build_vocabs(src.catalogue, src.users, np.unique(exposures.user_id))
        model = FullRanking(replace(arch, sizes=sizes(vocabs)))
        model.set_priors(exposures.labels.mean(axis=0))
    features = ranking_features(vocabs, src.catalogue, src.users, src.clicks, exposures, fr.sequence_length)
    log.info("full_ranking %s training on %s..%s: %d examples, %d epoch(s)%s", "aged" if parent else "cold",
             first, day, len(exposures), epochs, f", from {parent.name}" if parent else "")
    epochs_log = fit(model, features, exposures, fr, epochs, rng)
    meta = {
        "model": MODEL,
        "config": {"full": fr.model_dump()},
        "heads": list(RANKING_HEADS),
        "training_window": f"{first}..{day}",
        "sequence_window": f"{first - dt.timedelta(days=fr.history_days)}..{day}",
        "warm_started_from": parent.name if parent else None,
        "epochs": epochs,
        "examples": len(exposures),
        "positives": {h: int(n) for h, n in zip(RANKING_HEADS, exposures.labels.sum(axis=0))},
        "loss_per_epoch": [e["loss"] for e in epochs_log],
        "examples_per_s": [e["examples_per_s"] for e in epochs_log],
        "data_hash": _data_hash(src, first, exposures),
    }
    return artifacts.publish(store, lambda folder: save_model(folder, model, vocabs), meta, make_current)


def predict(cfg: PlatformConfig, version: artifacts.Version, exposures: Exposures) -> np.ndarray:
    """(n, len(RANKING_HEADS)) float32 probabilities of `exposures` under `version`, features read
    read-only from the warehouse (ids the version does not know use the unknown row)."""
    model, vocabs = load_model(version.path)
    if not len(exposures):
        return np.zeros((0, len(RANKING_HEADS)), np.float32)
    first, last = (exposures.day.min().astype(dt.date), exposures.day.max().astype(dt.date))
    with connect_read(cfg) as con:
        src = load_sources(con, first, last, cfg.ranking.full.history_days)
    length = version.meta["config"]["full"]["sequence_length"]
    f = ranking_features(vocabs, src.catalogue, src.users, src.clicks, exposures, length)
    return predict_proba(model, f.users, f.items, f.context, f.seq)
