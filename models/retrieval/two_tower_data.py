"""Two-tower inputs as arrays: vocabularies over a day's ids, feature rows of users and items,
behaviour sequences, and the training set with its batches (in-batch, random and hard negatives).

Items are catalogue rows (tasks.retrieval.data) until they enter the model, where they become
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

from models.common.features import item_features, sequences_before, to_item_rows, user_features
from models.common.tables import Catalogue, Events, UserTable
from models.common.vocab import Vocab

NEG_POWER = 0.75  # random negatives are sampled with popularity ** NEG_POWER


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
    examples = history.select(mask)
    table = item_features(vocabs, catalogue)
    counts = np.bincount(examples.item, minlength=len(catalogue)).astype(np.float64)
    q = counts**NEG_POWER
    ex_users, hard_user = np.unique(examples.user_id, return_inverse=True)
    if unclicked is None:
        unclicked = history.select(np.zeros(len(history), bool))
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
