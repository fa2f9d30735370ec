"""Nightly ItemCF and Swing (docs/METHODS.md "ItemCF"): the top-k neighbour table of the window ending on a day,
published as a registry version, and the U2I2I retriever over a stored version.

Version files: item_ids.npy (the items of the table, external ids), neighbours.npy (n_items x
top_k external item ids, best first, -1 padded), scores.npy (same shape), meta.json (config,
training window, positives, similar pairs, data hash). Ids are external, so a table trained
yesterday serves today's catalogue (new items have no neighbours until the next table).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np

from models.common.features import lookup
from models.common.tables import Catalogue, Events
from models.retrieval.cf_common import user_item_matrix
from models.retrieval.i2i import U2I2I, NeighbourTable, itemcf, swing
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.retrieval.data import connect_read, data_hash, load_catalogue, load_events

log = logging.getLogger(__name__)
FITTERS = {"itemcf": itemcf, "swing": swing}  # model name -> fit(positives, its config section)


def fit_table(cfg: PlatformConfig, model: str, catalogue: Catalogue, events: Events) -> NeighbourTable:
    """The model's neighbour table over catalogue rows."""
    if model not in FITTERS:
        raise ValueError(f"unknown I2I model {model!r}; known: {', '.join(FITTERS)}")
    positives = user_item_matrix(events, len(catalogue))[1]
    return FITTERS[model](positives, getattr(cfg.retrieval, model))


def train(cfg: PlatformConfig, model: str, day: dt.date, make_current: bool = False) -> artifacts.Version:
    """Fit `model` on the positives of the `train_window_days` days ending on `day` and publish
    the table as a new version (current only if `make_current`: the nightly DAG switches it after
    its evaluation gate)."""
    first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        events = load_events(con, catalogue, cfg.retrieval.positive_event, first, day)
    if not len(events):
        raise ValueError(f"{model}: no {cfg.retrieval.positive_event} positives on {first}..{day}")
    started = time.perf_counter()
    table = fit_table(cfg, model, catalogue, events)
    seconds = time.perf_counter() - started
    filled = table.neighbours >= 0
    log.info("%s on %s..%s: %d positives, %d items, %d neighbour pairs in %.1f s",
             model, first, day, len(events), len(catalogue), int(filled.sum()), seconds)
    meta = {
        "model": model,
        "config": {"positive_event": cfg.retrieval.positive_event, "train_window_days": cfg.retrieval.train_window_days,
                   model: getattr(cfg.retrieval, model).model_dump()},
        "training_window": f"{first}..{day}",
        "positives": len(events),
        "items": len(catalogue),
        "items_with_neighbours": int(filled.any(axis=1).sum()),
        "neighbour_pairs": int(filled.sum()),
        "fit_seconds": round(seconds, 2),
        "data_hash": data_hash(catalogue, first, events),
    }

    def write(folder: Path) -> dict:
        np.save(folder / "item_ids.npy", catalogue.item_id.astype(np.int64))
        np.save(folder / "neighbours.npy", np.where(filled, catalogue.item_id[table.neighbours], -1))
        np.save(folder / "scores.npy", table.scores)
        return {}

    return artifacts.publish(registry.model_store(cfg, model), write, meta, make_current=make_current)


def load_table(version: artifacts.Version, catalogue: Catalogue) -> NeighbourTable:
    """A stored table over `catalogue`'s rows: items the version has not seen get no neighbours,
    neighbours no longer in the catalogue are dropped (rows stay best first, -1 padded)."""
    ids = np.load(version.path / "item_ids.npy")
    stored, scores = np.load(version.path / "neighbours.npy"), np.load(version.path / "scores.npy")
    pos, known = lookup(catalogue.item_id, ids)
    rows, in_catalogue = lookup(stored.ravel(), catalogue.item_id)
    rows = np.where(in_catalogue & (stored.ravel() >= 0), rows, -1).reshape(stored.shape)
    order = np.argsort(rows < 0, axis=1, kind="stable")  # kept neighbours first, in their order
    rows = np.take_along_axis(rows, order, 1)
    scores = np.where(rows >= 0, np.take_along_axis(scores, order, 1), 0.0)
    neighbours = np.full((len(catalogue), stored.shape[1]), -1, dtype=np.int64)
    out_scores = np.zeros((len(catalogue), stored.shape[1]))
    neighbours[known], out_scores[known] = rows[pos[known]], scores[pos[known]]
    return NeighbourTable(neighbours, out_scores)


def retriever(cfg: PlatformConfig, version: artifacts.Version, catalogue: Catalogue, events: Events) -> U2I2I:
    """U2I2I over a stored version, seeded by each user's most recent positives in `events`."""
    return U2I2I(version.meta["model"], load_table(version, catalogue), events, cfg.retrieval.seed_items)
