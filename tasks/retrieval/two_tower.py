"""Nightly two-tower training (docs/METHODS.md "Two-tower" aged model) and publishing as a new version.

Cold start (no current version, or warm_start off): the `train_window_days` days ending on `day`,
`first_epochs` epochs, oldest day first. Aged ("old soup") training: the current version's
weights, vocabularies extended by the new ids, 1 epoch on the positives of the days after its
window (`day` alone on a normal night; the missed days, oldest first, after a gap). Either way the
behaviour sequences come from the positives of the whole window, and the version is published
without becoming current (the nightly DAG switches it after evaluation).

The examples are read from the lake in chunks of `training.read_batch_rows` positives, their
sequences and hard negatives read per chunk for the chunk's users (`fit_streamed`, docs/SCALE.md
"Training that streams"); with `training.processes` > 1 the training is data parallel.

Version files: weights.pt, vocab.npz, item_ids.npy + item_vectors.npy (every catalogue item up to
`day`), user_ids.npy + user_vectors.npy (every user with a positive in the window, with the
sequence as of the end of `day`, computed in blocks of users), meta.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch

from models.common import training
from models.common.checkpoints import save_model
from models.common.features import build_vocabs, item_features, latest_sequences, to_item_rows, user_features
from models.common.tables import Catalogue, UserTable
from models.common.vocab import Vocab
from models.retrieval.two_tower import (
    TwoTower,
    extend_model,
    item_vectors,
    load_model,
    sampled_softmax_loss,
    user_vectors,
)
from models.retrieval.two_tower_data import Batch, TrainingSet, batches, example_set, make_batch
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig, TwoTowerConfig
from tasks.retrieval.data import (
    connect_read,
    event_chunks,
    events_fingerprint,
    item_counts,
    load_catalogue,
    load_events,
    load_unclicked_impressions,
    read_events,
    to_events,
    unclicked_fingerprint,
    user_counts,
)

log = logging.getLogger(__name__)
MODEL = "two_tower"


def load_users(con: duckdb.DuckDBPyConnection, through: dt.date) -> UserTable:
    """Features of the users delivered up to `through` (the latest row per user)."""
    df = con.execute(
        """
        select user_id, gender, age_bucket, city_tier from raw.users where dt <= ?
        qualify row_number() over (partition by user_id order by dt desc) = 1
        order by user_id
        """,
        [through],
    ).df()
    return UserTable(
        user_id=df.user_id.to_numpy(np.int64),
        gender=df.gender.to_numpy(str),
        age_bucket=df.age_bucket.to_numpy(str),
        city_tier=df.city_tier.to_numpy(np.int64),
    )


def batch_loss(model: TwoTower, batch: Batch, temperature: float, logq_correction: bool) -> torch.Tensor:
    """The sampled softmax loss of one batch (in-batch + random candidates, hard negatives); in a
    process group, of the whole batch, its users and hard negatives gathered from every rank."""
    u = training.gather_rows(model.encode_users(batch.users, batch.seq), batch.shares)
    hard = (training.gather_rows(model.encode_items(batch.hard_features), batch.shares)
            if batch.hard_items.shape[1] else None)
    return sampled_softmax_loss(
        u, batch.items[: len(u)], model.encode_items(batch.features), batch.items, temperature,
        batch.log_q if logq_correction else None, hard, training.gather_rows(batch.hard_items, batch.shares),
    )


def fit(
    model: TwoTower, data: TrainingSet, tt: TwoTowerConfig, epochs: int, rng: np.random.Generator
) -> list[dict[str, float]]:
    """Adam over `epochs` epochs of an in-memory `data` (models.common.training.fit); per epoch: mean
    loss and examples/s."""
    return training.fit(
        model, lambda: batches(data, tt.batch_size, rng, tt.random_negatives, tt.hard_negatives),
        lambda batch: (batch_loss(model, batch, tt.temperature, tt.logq_correction), len(batch.users)),
        examples=len(data), epochs=epochs, lr=tt.learning_rate, label=MODEL,
    )


def chunk_examples(
    con: duckdb.DuckDBPyConnection, cfg: PlatformConfig, vocabs: Mapping[str, Vocab], catalogue: Catalogue,
    users: UserTable, chunk: pa.Table, rows: np.ndarray, counts: np.ndarray, first: dt.date, day: dt.date,
) -> TrainingSet:
    """The TrainingSet of the positives chunk[rows] (an event_chunks table; in that order): their
    sequences from their users' positives of the window ending on `day`, their hard negatives from
    those users' unclicked impressions of first..day, both read now; `counts`: the positives per
    catalogue row of the whole training set."""
    tt, event = cfg.retrieval.two_tower, cfg.retrieval.positive_event
    window_first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    own_users = np.unique(chunk.column("user_id").to_numpy()[rows])
    history = read_events(con, catalogue, event, window_first, day, own_users)
    history_ids = history.column("event_id").to_numpy()
    by_id = np.argsort(history_ids)
    at = by_id[np.searchsorted(history_ids[by_id], chunk.column("event_id").to_numpy()[rows])]
    unclicked = load_unclicked_impressions(con, catalogue, first, day, own_users) if tt.hard_negatives else None
    return example_set(to_events(history, catalogue), at, vocabs, catalogue, users, tt.sequence_length, counts,
                       unclicked)


def fit_streamed(
    cfg: PlatformConfig, model: TwoTower, vocabs: Mapping[str, Vocab], catalogue: Catalogue, users: UserTable,
    counts: np.ndarray, first: dt.date, day: dt.date, epochs: int,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Adam over `epochs` epochs of the positives of first..day read from the lake in chunks of
    `training.read_batch_rows` rows (tasks.retrieval.data.event_chunks); `counts`: the positives per
    catalogue row over those days. Per chunk: days oldest first and shuffled within a day (one draw per row), cut into batches; this rank's block of every batch (all of it
    with one process) gets its inputs (`chunk_examples`). (The state dict, per-epoch mean loss and
    examples/s.)"""
    tt = cfg.retrieval.two_tower
    rank, world = training.rank_world()
    rng = np.random.default_rng([tt.seed, day.toordinal()])
    with connect_read(cfg) as con:

        def epoch() -> Iterator[Batch]:
            for chunk in event_chunks(con, catalogue, cfg.retrieval.positive_event, first, day,
                                      cfg.training.read_batch_rows):
                chunk_day = chunk.column("day").to_numpy().astype("datetime64[D]").astype(np.int64)
                cut = training.day_order(chunk_day, tt.batch_size, rng)
                mine, local = training.shard(cut, rank, world)
                data = chunk_examples(con, cfg, vocabs, catalogue, users, chunk, mine, counts, first, day)
                positives = catalogue.index(chunk.column("item_id").to_numpy())
                for batch, block in zip(cut, local):
                    yield make_batch(data, block, positives[batch], training.shares(len(batch), world), rank, rng,
                                     tt.random_negatives, tt.hard_negatives)

        history = training.fit(
            model, epoch, lambda batch: (batch_loss(model, batch, tt.temperature, tt.logq_correction), sum(batch.shares)),
            examples=int(counts.sum()), epochs=epochs, lr=tt.learning_rate, label=MODEL,
        )
    return model.state_dict(), history


def window_sequences(
    con: duckdb.DuckDBPyConnection, catalogue: Catalogue, event: str, first: dt.date, last: dt.date,
    user_ids: np.ndarray, counts: np.ndarray, length: int, rows: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(user ids, their `length` latest positives of first..last as catalogue rows, most recent
    first, -1 padded) for `user_ids` (sorted, with `counts` positives each), in blocks of
    users holding about `rows` positives, each read from the lake on its own."""
    cuts = np.searchsorted(np.cumsum(counts), np.arange(rows, int(np.sum(counts)), rows), side="right")
    for lo, hi in pairwise(np.unique(np.r_[0, cuts, len(user_ids)])):
        ids = user_ids[lo:hi]
        yield ids, latest_sequences(load_events(con, catalogue, event, first, last, ids), ids, length)


def export(folder: Path, model: TwoTower, vocabs: Mapping[str, Vocab], catalogue: Catalogue, users: UserTable,
           sequences: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    """Item vectors of the catalogue and user vectors into `folder`; `sequences`: blocks of (user
    ids, ascending over the blocks, and their latest positives as catalogue rows, -1 padded)."""
    np.save(folder / "item_ids.npy", catalogue.item_id.astype(np.int64))
    np.save(folder / "item_vectors.npy", item_vectors(model, item_features(vocabs, catalogue)))
    item_rows = vocabs["item"].rows(catalogue.item_id)
    ids, vectors = [np.zeros(0, np.int64)], [np.zeros((0, model.item_mlp[-1].out_features), np.float32)]
    for user_ids, seq in sequences:
        ids.append(user_ids)
        vectors.append(user_vectors(model, user_features(vocabs, users, user_ids), to_item_rows(seq, item_rows)))
    np.save(folder / "user_ids.npy", np.concatenate(ids))
    np.save(folder / "user_vectors.npy", np.concatenate(vectors))
    return {"exported_items": len(catalogue), "exported_users": sum(map(len, ids))}


def train(cfg: PlatformConfig, day: dt.date, make_current: bool = False, store: Path | None = None) -> artifacts.Version:
    """Train on the window ending on `day` (cold or aged, see the module doc) and publish a version
    in `store` (default: the registry's two-tower store); with `training.processes` > 1 on that many
    processes (models.common.training.run), the version published once from rank 0's weights."""
    tt, store, event = cfg.retrieval.two_tower, store or registry.model_store(cfg, MODEL), cfg.retrieval.positive_event
    window_first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    parent = artifacts.current(store) if tt.warm_start else None
    parent_last = registry.trained_through(parent) if parent else None
    if parent_last and parent_last >= day:
        raise ValueError(f"two_tower: current version {parent.name} has training window "
                         f"{parent.meta['training_window']}; aged training needs a later day than {day}")
    # aged: 1 epoch on the days after the parent's window (one day on a normal night)
    first, epochs = (max(parent_last + dt.timedelta(days=1), window_first), 1) if parent_last else (window_first, tt.first_epochs)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        users = load_users(con, day)
        window_users, window_counts = user_counts(con, catalogue, event, window_first, day)
        counts = item_counts(con, catalogue, event, first, day)
        hashes = [events_fingerprint(con, catalogue, event, window_first, day)]
        if tt.hard_negatives:
            hashes.append(unclicked_fingerprint(con, catalogue, first, day))
    if not counts.sum():
        raise ValueError(f"two_tower: no {event} positives on {first}..{day}")
    torch.manual_seed(tt.seed)
    if parent:
        old, old_vocabs = load_model(parent.path)
        vocabs = build_vocabs(catalogue, users, window_users, old_vocabs)
        model = extend_model(old, old_vocabs, vocabs, tt.dim)
    else:
        vocabs = build_vocabs(catalogue, users, window_users)
        model = TwoTower({k: len(v) for k, v in vocabs.items()}, tt.dim)
    examples = int(counts.sum())
    log.info("two_tower %s training on %s..%s: %d examples, %d epoch(s)%s", "aged" if parent else "cold",
             first, day, examples, epochs, f", from {parent.name}" if parent else "")
    state, epochs_log = training.run(cfg.training.processes, fit_streamed, cfg, model, vocabs, catalogue, users,
                                     counts, first, day, epochs)
    model.load_state_dict(state)
    meta = {
        "model": MODEL,
        "config": {"positive_event": event, "train_window_days": cfg.retrieval.train_window_days,
                   "two_tower": tt.model_dump()},
        "training_window": f"{first}..{day}",
        "sequence_window": f"{window_first}..{day}",
        "warm_started_from": parent.name if parent else None,
        "epochs": epochs,
        "examples": examples,
        "loss_per_epoch": [e["loss"] for e in epochs_log],
        "examples_per_s": [e["examples_per_s"] for e in epochs_log],
        "data_hash": hashlib.sha256(":".join([first.isoformat(), *hashes]).encode()).hexdigest(),
    }

    def write(folder: Path) -> dict[str, int]:
        save_model(folder, model, vocabs)
        with connect_read(cfg) as con:
            return export(folder, model, vocabs, catalogue, users, window_sequences(
                con, catalogue, event, window_first, day, window_users, window_counts, tt.sequence_length,
                cfg.training.read_batch_rows))

    return artifacts.publish(store, write, meta, make_current=make_current)
