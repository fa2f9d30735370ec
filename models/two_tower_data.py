"""Two-tower inputs as arrays: vocabularies over a day's ids, feature rows of users and items,
behaviour sequences, and the training set with its batches (in-batch, random and hard negatives).

Items are catalogue rows (tasks.retrieval_data) until they enter the model, where they become
vocabulary rows through the item feature table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from models.two_tower import KINDS, Vocab
from tasks.retrieval_data import Catalogue, Events

NEG_POWER = 0.75  # random negatives are sampled with popularity ** NEG_POWER


@dataclass(frozen=True)
class UserTable:
    """User features as of a day, sorted by user_id."""

    user_id: np.ndarray  # int64
    gender: np.ndarray  # str
    age_bucket: np.ndarray  # str
    city_tier: np.ndarray  # int64


def build_vocabs(
    catalogue: Catalogue, users: UserTable, user_ids: np.ndarray, base: Mapping[str, Vocab] | None = None
) -> dict[str, Vocab]:
    """Vocabularies over the catalogue, the user feature values and `user_ids`; with `base`, its
    vocabularies extended by the new values (old rows kept)."""
    values = {
        "user": user_ids,
        "gender": users.gender,
        "age_bucket": users.age_bucket,
        "city_tier": users.city_tier,
        "item": catalogue.item_id,
        "author": catalogue.author_id,
        "category_l1": np.asarray(catalogue.l1_names)[catalogue.category_l1],
        "category_l2": np.asarray(catalogue.l2_names)[catalogue.category_l2],
        "content_cluster": catalogue.content_cluster.astype(np.int64),
    }
    if base is None:
        return {kind: Vocab.build(values[kind]) for kind in KINDS}
    return {kind: base[kind].extend(values[kind]) for kind in KINDS}


def item_features(vocabs: Mapping[str, Vocab], catalogue: Catalogue) -> np.ndarray:
    """(len(catalogue), 5) int64 vocabulary rows: item, author, category_l1, category_l2, cluster."""
    return np.stack(
        [
            vocabs["item"].rows(catalogue.item_id),
            vocabs["author"].rows(catalogue.author_id),
            vocabs["category_l1"].rows(np.asarray(catalogue.l1_names)[catalogue.category_l1]),
            vocabs["category_l2"].rows(np.asarray(catalogue.l2_names)[catalogue.category_l2]),
            vocabs["content_cluster"].rows(catalogue.content_cluster.astype(np.int64)),
        ],
        axis=1,
    )


def lookup(values: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each value in sorted_ids, whether it is there; position 0 where not)."""
    if not len(sorted_ids):
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    found = sorted_ids[pos] == values
    return np.where(found, pos, 0), found


def user_features(vocabs: Mapping[str, Vocab], users: UserTable, user_ids: np.ndarray) -> np.ndarray:
    """(len(user_ids), 4) int64 vocabulary rows: user, gender, age bucket, city tier (0 = unknown,
    also for a user missing from `users`)."""
    pos, known = lookup(user_ids, users.user_id)
    out = np.zeros((len(user_ids), 4), dtype=np.int64)
    out[:, 0] = vocabs["user"].rows(user_ids)
    for col, kind in enumerate(("gender", "age_bucket", "city_tier"), start=1):
        out[known, col] = vocabs[kind].rows(getattr(users, kind)[pos[known]])
    return out


def _by_user(events: Events) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(order: events sorted by user then time, distinct users, start and end of each user's run)."""
    order = np.argsort(events.user_id, kind="stable")  # events are time-ordered
    users, starts, counts = np.unique(events.user_id[order], return_index=True, return_counts=True)
    return order, users, starts, starts + counts


def _gather(items: np.ndarray, ends: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(len(ends), length) items[ends - 1], items[ends - 2], ... while >= starts; -1 beyond."""
    idx = ends[:, None] - 1 - np.arange(length)[None, :]
    return np.where(idx >= starts[:, None], items[np.maximum(idx, 0)], -1) if len(items) else np.full(idx.shape, -1)


def sequences_before(events: Events, length: int) -> np.ndarray:
    """(len(events), length) catalogue rows of each event's user's previous positives, most recent
    first, -1 padded."""
    order, _, starts, ends = _by_user(events)
    run_start = np.repeat(starts, ends - starts)
    out = np.empty((len(events), length), dtype=np.int64)
    out[order] = _gather(events.item[order], np.arange(len(events)), run_start, length)
    return out


def latest_sequences(events: Events, user_ids: np.ndarray, length: int) -> np.ndarray:
    """(len(user_ids), length) catalogue rows of each user's last positives in `events`, most
    recent first, -1 padded (all -1 for a user without events)."""
    order, users, starts, ends = _by_user(events)
    pos, known = lookup(user_ids, users)
    return _gather(events.item[order], np.where(known, ends[pos], 0), np.where(known, starts[pos], 0), length)


def to_item_rows(seq: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """Catalogue-row sequences (-1 padded) as item vocabulary rows (0 padded)."""
    return np.where(seq >= 0, item_rows[np.maximum(seq, 0)], 0)


class Batch(NamedTuple):
    """One training step's tensors; items are catalogue rows until looked up in `features`."""

    users: Tensor  # (B, 4) user feature rows
    seq: Tensor  # (B, L) item vocabulary rows, 0 = padding
    items: Tensor  # (B + R,) catalogue rows: the positives, then the random negatives
    features: Tensor  # (B + R, 5) their item feature rows
    log_q: Tensor  # (B + R,) log expected count of each candidate among the sampled ones
    hard_items: Tensor  # (B, H) catalogue rows of hard negatives, -1 = none
    hard_features: Tensor  # (B, H, 5)


@dataclass(frozen=True)
class TrainingSet:
    """Positive examples (time-ordered) with their inputs, and what negatives are drawn from."""

    users: Tensor  # (N, 4)
    seq: Tensor  # (N, L)
    items: np.ndarray  # (N,) catalogue rows
    day: np.ndarray  # (N,) day index, for oldest-first epochs
    item_table: Tensor  # (n_catalogue, 5) item feature rows
    p: np.ndarray  # (n_catalogue,) each item's share of the positives
    q: np.ndarray  # (n_catalogue,) random-negative sampling distribution, ∝ count ** NEG_POWER
    hard_user: np.ndarray  # (N,) index of the example's user into hard_ptr
    hard_ptr: np.ndarray  # CSR pointers: the user's unclicked impressions in hard_items
    hard_items: np.ndarray  # catalogue rows

    def __len__(self) -> int:
        return len(self.items)


def subset(events: Events, mask: np.ndarray) -> Events:
    """The events where `mask` holds (order kept)."""
    return Events(events.user_id[mask], events.item[mask], events.ts_us[mask], events.day[mask])


def training_set(
    history: Events,
    first_day: dt.date,
    vocabs: Mapping[str, Vocab],
    catalogue: Catalogue,
    users: UserTable,
    sequence_length: int,
    unclicked: Events | None = None,
) -> TrainingSet:
    """The positives of `history` from `first_day` on, each with its user's earlier positives in
    `history` as its sequence, and per-user hard negatives from `unclicked` (None: no hard ones)."""
    mask = history.day >= np.datetime64(first_day, "D")
    examples = subset(history, mask)
    table = item_features(vocabs, catalogue)
    counts = np.bincount(examples.item, minlength=len(catalogue)).astype(np.float64)
    q = counts**NEG_POWER
    ex_users, hard_user = np.unique(examples.user_id, return_inverse=True)
    if unclicked is None:
        unclicked = subset(history, np.zeros(len(history), bool))
    keep = np.isin(unclicked.user_id, ex_users)
    owner = np.searchsorted(ex_users, unclicked.user_id[keep])
    order = np.argsort(owner, kind="stable")
    return TrainingSet(
        users=torch.from_numpy(user_features(vocabs, users, examples.user_id)),
        seq=torch.from_numpy(to_item_rows(sequences_before(history, sequence_length)[mask], table[:, 0])),
        items=examples.item.astype(np.int64),
        day=(examples.day - np.datetime64(first_day, "D")).astype(np.int64),
        item_table=torch.from_numpy(table),
        p=counts / max(counts.sum(), 1.0),
        q=q / max(q.sum(), 1.0),
        hard_user=hard_user.astype(np.int64),
        hard_ptr=np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(ex_users)))]).astype(np.int64),
        hard_items=unclicked.item[keep][order].astype(np.int64),
    )


def _hard_negatives(data: TrainingSet, idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(len(idx), n) catalogue rows drawn uniformly from each example's user's unclicked
    impressions (with replacement), -1 for a user without any."""
    lo, hi = data.hard_ptr[data.hard_user[idx]], data.hard_ptr[data.hard_user[idx] + 1]
    pick = lo[:, None] + (rng.random((len(idx), n)) * (hi - lo)[:, None]).astype(np.int64)
    if not len(data.hard_items):
        return np.full(pick.shape, -1, dtype=np.int64)
    return np.where((hi > lo)[:, None], data.hard_items[np.minimum(pick, len(data.hard_items) - 1)], -1)


def batches(
    data: TrainingSet, batch_size: int, rng: np.random.Generator, random_negatives: int = 0, hard_negatives: int = 0
) -> Iterator[Batch]:
    """One epoch: days oldest first, shuffled within a day; random negatives drawn per batch
    ∝ popularity^0.75, hard negatives per example from its user's unclicked impressions.

    logQ of a candidate j: log of its expected count among the B positives (drawn ∝ p_j) and the
    R random negatives (∝ q_j), B p_j + R q_j; without random negatives that is log p_j plus a
    constant the softmax ignores (Yi et al. 2019)."""
    order = np.lexsort((rng.random(len(data)), data.day))
    cdf = np.cumsum(data.q)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        pos = data.items[idx]
        neg = np.minimum(np.searchsorted(cdf, rng.random(random_negatives) * cdf[-1], side="right"), len(cdf) - 1)
        cand = np.concatenate([pos, neg])
        expected = len(idx) * data.p[cand] + random_negatives * data.q[cand]
        hard = _hard_negatives(data, idx, hard_negatives, rng)
        hard_t = torch.from_numpy(hard)
        idx_t, cand_t = torch.from_numpy(idx), torch.from_numpy(cand)
        yield Batch(
            users=data.users[idx_t],
            seq=data.seq[idx_t],
            items=cand_t,
            features=data.item_table[cand_t],
            log_q=torch.from_numpy(np.log(expected)).float(),
            hard_items=hard_t,
            hard_features=data.item_table[hard_t.clamp(min=0)],
        )
