"""Nightly two-tower training (docs/METHODS.md "Two-tower" aged model) and publishing as a new version.

Cold start (no current version, or warm_start off): the `train_window_days` days ending on `day`,
`first_epochs` epochs, oldest day first. Aged ("old soup") training: the current version's
weights, vocabularies extended by the new ids, 1 epoch on the positives of the days after its
window (`day` alone on a normal night; the missed days, oldest first, after a gap). Either way the
behaviour sequences come from the positives of the whole window, and the version is published
without becoming current (the nightly DAG switches it after evaluation).

Version files: weights.pt, vocab.npz, item_ids.npy + item_vectors.npy (every catalogue item up to
`day`), user_ids.npy + user_vectors.npy (every user with a positive in the window, with the
sequence as of the end of `day`), meta.json.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path

import duckdb
import numpy as np
import torch

from models.common import training
from models.common.checkpoints import save_model
from models.common.features import build_vocabs, item_features, latest_sequences, to_item_rows, user_features
from models.common.tables import Catalogue, Events, UserTable
from models.common.vocab import Vocab
from models.retrieval.two_tower import (
    TwoTower,
    extend_model,
    item_vectors,
    load_model,
    sampled_softmax_loss,
    user_vectors,
)
from models.retrieval.two_tower_data import Batch, TrainingSet, batches, training_set
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig, TwoTowerConfig
from tasks.retrieval.data import connect_read, data_hash, load_catalogue, load_events, load_unclicked_impressions

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
    """The sampled softmax loss of one batch (in-batch + random candidates, hard negatives)."""
    u = model.encode_users(batch.users, batch.seq)
    hard = model.encode_items(batch.hard_features) if batch.hard_items.shape[1] else None
    return sampled_softmax_loss(
        u, batch.items[: len(u)], model.encode_items(batch.features), batch.items, temperature,
        batch.log_q if logq_correction else None, hard, batch.hard_items,
    )


def fit(
    model: TwoTower, data: TrainingSet, tt: TwoTowerConfig, epochs: int, rng: np.random.Generator
) -> list[dict[str, float]]:
    """Adam over `epochs` epochs of `data` (models.common.training.fit); per epoch: mean loss and examples/s."""
    return training.fit(
        model, lambda: batches(data, tt.batch_size, rng, tt.random_negatives, tt.hard_negatives),
        lambda batch: (batch_loss(model, batch, tt.temperature, tt.logq_correction), len(batch.users)),
        examples=len(data), epochs=epochs, lr=tt.learning_rate, label=MODEL,
    )


def export(folder: Path, model: TwoTower, vocabs: Mapping[str, Vocab], catalogue: Catalogue, users: UserTable,
           history: Events, sequence_length: int) -> dict[str, int]:
    """Item vectors of the catalogue and user vectors of the window's users into `folder`."""
    np.save(folder / "item_ids.npy", catalogue.item_id.astype(np.int64))
    np.save(folder / "item_vectors.npy", item_vectors(model, item_features(vocabs, catalogue)))
    user_ids = np.unique(history.user_id)
    seq = latest_sequences(history, user_ids, sequence_length)
    item_rows = vocabs["item"].rows(catalogue.item_id)
    vectors = user_vectors(model, user_features(vocabs, users, user_ids), to_item_rows(seq, item_rows))
    np.save(folder / "user_ids.npy", user_ids)
    np.save(folder / "user_vectors.npy", vectors)
    return {"exported_items": len(catalogue), "exported_users": len(user_ids)}


def train(cfg: PlatformConfig, day: dt.date, make_current: bool = False, store: Path | None = None) -> artifacts.Version:
    """Train on the window ending on `day` (cold or aged, see the module doc) and publish a version
    in `store` (default: the registry's two-tower store)."""
    tt, store = cfg.retrieval.two_tower, store or registry.model_store(cfg, MODEL)
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
        history = load_events(con, catalogue, cfg.retrieval.positive_event, window_first, day)
        users = load_users(con, day)
        unclicked = load_unclicked_impressions(con, catalogue, first, day) if tt.hard_negatives else None
    torch.manual_seed(tt.seed)
    rng = np.random.default_rng([tt.seed, day.toordinal()])
    if parent:
        old, old_vocabs = load_model(parent.path)
        vocabs = build_vocabs(catalogue, users, np.unique(history.user_id), old_vocabs)
        model = extend_model(old, old_vocabs, vocabs, tt.dim)
    else:
        vocabs = build_vocabs(catalogue, users, np.unique(history.user_id))
        model = TwoTower({k: len(v) for k, v in vocabs.items()}, tt.dim)
    data = training_set(history, first, vocabs, catalogue, users, tt.sequence_length, unclicked)
    if not len(data):
        raise ValueError(f"two_tower: no {cfg.retrieval.positive_event} positives on {first}..{day}")
    log.info("two_tower %s training on %s..%s: %d examples, %d epoch(s)%s", "aged" if parent else "cold",
             first, day, len(data), epochs, f", from {parent.name}" if parent else "")
    epochs_log = fit(model, data, tt, epochs, rng)
    meta = {
        "model": MODEL,
        "config": {"positive_event": cfg.retrieval.positive_event, "train_window_days": cfg.retrieval.train_window_days,
                   "two_tower": tt.model_dump()},
        "training_window": f"{first}..{day}",
        "sequence_window": f"{window_first}..{day}",
        "warm_started_from": parent.name if parent else None,
        "epochs": epochs,
        "examples": len(data),
        "loss_per_epoch": [e["loss"] for e in epochs_log],
        "examples_per_s": [e["examples_per_s"] for e in epochs_log],
        "data_hash": data_hash(catalogue, first, history, *([unclicked] if unclicked is not None else [])),
    }

    def write(folder: Path) -> dict[str, int]:
        save_model(folder, model, vocabs)
        return export(folder, model, vocabs, catalogue, users, history, tt.sequence_length)

    return artifacts.publish(store, write, meta, make_current=make_current)
