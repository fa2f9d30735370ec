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
sequences read the clicks of the `history_days` days before the first exposure day onwards. The
exposures are read from the lake in chunks of `training.read_batch_rows`, each chunk's features
built from its users' clicks (`fit_streamed`, docs/SCALE.md "Training that streams"); with
`training.processes` > 1 the training is data parallel.

Version files: weights.pt, vocab.npz, architecture.json (models/ranking/full.py), meta.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import torch
import torch.nn.functional as F

from models.common import training
from models.common.features import build_vocabs
from models.common.tables import Catalogue, Events, Exposures, UserTable
from models.common.vocab import Vocab
from models.ranking.features import RankingFeatures, ranking_features
from models.ranking.full import Architecture, FullRanking, extend_model, load_model, predict_proba, save_model, sizes
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, FullRankingConfig, PlatformConfig
from tasks.ranking.data import exposure_chunks, exposure_stats
from tasks.retrieval.data import connect_read, events_fingerprint, load_catalogue, load_events
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


class Batch(NamedTuple):
    """One step's tensors: this rank's block of a batch's examples (all of them with one process)
    and the labels of the whole batch."""

    users: torch.Tensor  # (b, 4)
    items: torch.Tensor  # (b, 5)
    context: torch.Tensor  # (b, 3)
    seq: torch.Tensor  # (b, L, 5)
    labels: torch.Tensor  # (B, heads)
    shares: tuple[int, ...]  # examples per rank, in rank order


def batch_loss(model: FullRanking, batch: Batch) -> torch.Tensor:
    """Mean binary cross-entropy over the batch's examples and heads (the logits of every rank's
    block gathered in a process group)."""
    logits = model(batch.users, batch.items, batch.context, batch.seq)
    return F.binary_cross_entropy_with_logits(training.gather_rows(logits, batch.shares), batch.labels)


def _batches(f: RankingFeatures, labels: torch.Tensor, cut: list[np.ndarray], local: list[np.ndarray],
             world: int) -> Iterator[Batch]:
    """Per batch of rows `cut` (into `labels`): the features of this rank's block, rows `local` of `f`."""
    for rows, block in zip(cut, local):
        yield Batch(*(torch.from_numpy(a[block]) for a in (f.users, f.items, f.context, f.seq)), labels[rows],
                    training.shares(len(rows), world))


def fit(model: FullRanking, features: RankingFeatures, exposures: Exposures, fr: FullRankingConfig, epochs: int,
        rng: np.random.Generator) -> list[dict[str, float]]:
    """Adam over `epochs` epochs of in-memory examples, one process (days oldest first, shuffled
    within a day; models.common.training.fit); per epoch: mean loss and examples/s."""
    labels = torch.from_numpy(np.ascontiguousarray(exposures.labels, np.float32))

    def epoch_batches() -> Iterator[Batch]:
        cut = training.day_order(exposures.day, fr.batch_size, rng)
        return _batches(features, labels, cut, cut, 1)

    return training.fit(model, epoch_batches, lambda batch: (batch_loss(model, batch), len(batch.labels)),
                        examples=len(exposures), epochs=epochs, lr=fr.learning_rate, label=MODEL)


def chunk_features(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig, vocabs: Mapping[str, Vocab],
                   catalogue: Catalogue, users: UserTable, exposures: Exposures, first: dt.date, day: dt.date,
                   ) -> RankingFeatures:
    """The features of `exposures` (some of the training examples of first..day), the behaviour
    sequences from their users' clicks of the `history_days` days before `first` up to `day`, read now."""
    clicks = load_events(con, catalogue, "click", first - dt.timedelta(days=cfg.ranking.full.history_days), day,
                         np.unique(exposures.user_id))
    return ranking_features(vocabs, catalogue, users, clicks, exposures, cfg.ranking.full.sequence_length)


def fit_streamed(cfg: PlatformConfig, model: FullRanking, vocabs: Mapping[str, Vocab], catalogue: Catalogue,
                 users: UserTable, first: dt.date, day: dt.date, examples: int, epochs: int,
                 ) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Adam over `epochs` epochs of the `examples` exposures of first..day read from the lake in
    chunks of `training.read_batch_rows` rows (tasks.ranking.data.exposure_chunks). Per chunk: days
    oldest first and shuffled within a day (one draw per row), cut into batches; this rank's block of
    every batch (all of it with one process) gets its features (`chunk_features`). (The state dict,
    per-epoch mean loss and examples/s.)"""
    fr = cfg.ranking.full
    rank, world = training.rank_world()
    rng = np.random.default_rng([fr.seed, day.toordinal()])
    with connect_read(cfg) as con:

        def epoch() -> Iterator[Batch]:
            for chunk, _ in exposure_chunks(con, first, day, cfg.training.read_batch_rows):
                cut = training.day_order(chunk.day, fr.batch_size, rng)
                mine, local = training.shard(cut, rank, world)
                f = chunk_features(con, cfg, vocabs, catalogue, users, chunk.select(mine), first, day)
                yield from _batches(f, torch.from_numpy(chunk.labels), cut, local, world)

        history = training.fit(model, epoch, lambda batch: (batch_loss(model, batch), len(batch.labels)),
                               examples=examples, epochs=epochs, lr=fr.learning_rate, label=MODEL)
    return model.state_dict(), history


def architecture(fr: FullRankingConfig, vocabs: Mapping[str, Vocab] | None = None) -> Architecture:
    """The full ranker's architecture from its settings (embedding sizes from `vocabs`, else none)."""
    return Architecture(sizes(vocabs) if vocabs is not None else {}, len(RANKING_HEADS), fr.embedding_dim,
                        fr.experts, fr.expert_hidden, fr.tower_hidden, fr.interaction, fr.match_counts)


def train(cfg: PlatformConfig, day: dt.date, make_current: bool = False, store: Path | None = None) -> artifacts.Version:
    """Train on the exposures ending on `day` (cold or aged, see the module doc) and publish a
    version in `store` (default: the registry's full_ranking store); with `training.processes` > 1
    on that many processes (models.common.training.run), published once from rank 0's weights."""
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
    clicks_first = first - dt.timedelta(days=fr.history_days)
    with connect_read(cfg) as con:
        stats = exposure_stats(con, first, day)
        catalogue = load_catalogue(con, day)
        users = load_users(con, day)
        clicks_digest = events_fingerprint(con, catalogue, "click", clicks_first, day)
    if not stats.examples:
        raise ValueError(f"full_ranking: no ranking_exposures on {first}..{day} (build them first: "
                         "tasks.ranking.data.build_exposures)")
    torch.manual_seed(fr.seed)
    arch = architecture(fr)
    if parent:
        old, old_vocabs = load_model(parent.path)
        if replace(old.arch, sizes={}) != arch:
            raise ValueError(f"full_ranking: cannot warm-start {arch} from {parent.name}: "
                             f"{replace(old.arch, sizes={})}")
        vocabs = build_vocabs(catalogue, users, stats.users, old_vocabs)
        model = extend_model(old, old_vocabs, vocabs)
    else:
        vocabs = build_vocabs(catalogue, users, stats.users)
        model = FullRanking(replace(arch, sizes=sizes(vocabs)))
        model.set_priors((stats.positives / stats.examples).astype(np.float32))
    log.info("full_ranking %s training on %s..%s: %d examples, %d epoch(s)%s", "aged" if parent else "cold",
             first, day, stats.examples, epochs, f", from {parent.name}" if parent else "")
    state, epochs_log = training.run(cfg.training.processes, fit_streamed, cfg, model, vocabs, catalogue, users,
                                     first, day, stats.examples, epochs)
    model.load_state_dict(state)
    meta = {
        "model": MODEL,
        "config": {"full": fr.model_dump()},
        "heads": list(RANKING_HEADS),
        "training_window": f"{first}..{day}",
        "sequence_window": f"{clicks_first}..{day}",
        "warm_started_from": parent.name if parent else None,
        "epochs": epochs,
        "examples": stats.examples,
        "positives": dict(zip(RANKING_HEADS, map(int, stats.positives))),
        "loss_per_epoch": [e["loss"] for e in epochs_log],
        "examples_per_s": [e["examples_per_s"] for e in epochs_log],
        "data_hash": hashlib.sha256(f"{first}:{clicks_digest}:{stats.digest}".encode()).hexdigest(),
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
