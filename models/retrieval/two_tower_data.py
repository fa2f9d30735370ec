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
from models.common.training import day_order
from models.common.vocab import Vocab

NEG_POWER = 0.75  # random negatives are sampled with popularity ** NEG_POWER


class Batch(NamedTuple):
    """One training step's tensors; items are catalogue rows until looked up in `features`. In a
    process group a rank holds its block of the batch's examples (users, seq, hard_*) and every
    candidate (items, features, log_q)."""

    users: Tensor  # (b, 4) user feature rows
    seq: Tensor  # (b, L) item vocabulary rows, 0 = padding
    items: Tensor  # (B + R,) catalogue rows: the batch's positives (all ranks'), then the random negatives
    features: Tensor  # (B + R, 5) their item feature rows
    log_q: Tensor  # (B + R,) log expected count of each candidate among the sampled ones
    hard_items: Tensor  # (b, H) catalogue rows of hard negatives, -1 = none
    hard_features: Tensor  # (b, H, 5)
    shares: tuple[int, ...]  # examples per rank, in rank order (one entry, b = B, with one process)


@dataclass(frozen=True)
class TrainingSet:
    """Positive examples with their inputs, and what negatives are drawn from."""

    users: Tensor  # (N, 4)
    seq: Tensor  # (N, L)
    items: np.ndarray  # (N,) catalogue rows
    day: np.ndarray  # (N,) day number (days since 1970-01-01), for oldest-first epochs
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
    """The positives of `history` from `first_day` on (time-ordered), each with its user's earlier
    positives in `history` as its sequence, and per-user hard negatives from `unclicked` (None: no
    hard ones): `example_set` of those rows with their own item counts."""
    rows = np.flatnonzero(history.day >= np.datetime64(first_day, "D"))
    counts = np.bincount(history.item[rows], minlength=len(catalogue)).astype(np.float64)
    return example_set(history, rows, vocabs, catalogue, users, sequence_length, counts, unclicked)


def example_set(
    history: Events,
    rows: np.ndarray,
    vocabs: Mapping[str, Vocab],
    catalogue: Catalogue,
    users: UserTable,
    sequence_length: int,
    counts: np.ndarray,
    unclicked: Events | None = None,
) -> TrainingSet:
    """The examples history[rows] (in that order), each with its user's earlier positives in
    `history` as its sequence (history must hold all of them for the examples' users), and per-user
    hard negatives from `unclicked` (None: no hard ones); `counts` (len(catalogue),): the positives
    per item of the whole training set, which p and q are drawn from."""
    examples = history.select(rows)
    table = item_features(vocabs, catalogue)
    q = counts**NEG_POWER
    ex_users, hard_user = np.unique(examples.user_id, return_inverse=True)
    if unclicked is None:
        unclicked = history.select(np.zeros(len(history), bool))
    keep = np.isin(unclicked.user_id, ex_users)
    owner = np.searchsorted(ex_users, unclicked.user_id[keep])
    order = np.argsort(owner, kind="stable")
    return TrainingSet(
        users=torch.from_numpy(user_features(vocabs, users, examples.user_id)),
        seq=torch.from_numpy(to_item_rows(sequences_before(history, sequence_length, rows), table[:, 0])),
        items=examples.item.astype(np.int64),
        day=examples.day.astype(np.int64),
        item_table=torch.from_numpy(table),
        p=counts / max(counts.sum(), 1.0),
        q=q / max(q.sum(), 1.0),
        hard_user=hard_user.astype(np.int64),
        hard_ptr=np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(ex_users)))]).astype(np.int64),
        hard_items=unclicked.item[keep][order].astype(np.int64),
    )


def _hard_negatives(data: TrainingSet, idx: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(len(idx), n) catalogue rows drawn uniformly (`draws` (len(idx), n) in [0, 1)) from each
    example's user's unclicked impressions (with replacement), -1 for a user without any."""
    lo, hi = data.hard_ptr[data.hard_user[idx]], data.hard_ptr[data.hard_user[idx] + 1]
    pick = lo[:, None] + (draws * (hi - lo)[:, None]).astype(np.int64)
    if not len(data.hard_items):
        return np.full(pick.shape, -1, dtype=np.int64)
    return np.where((hi > lo)[:, None], data.hard_items[np.minimum(pick, len(data.hard_items) - 1)], -1)


def batches(
    data: TrainingSet, batch_size: int, rng: np.random.Generator, random_negatives: int = 0, hard_negatives: int = 0
) -> Iterator[Batch]:
    """One epoch of `data` in one process: days oldest first, shuffled within a day
    (models.common.training.day_order), each batch from `make_batch`."""
    for idx in day_order(data.day, batch_size, rng):
        yield make_batch(data, idx, data.items[idx], (len(idx),), 0, rng, random_negatives, hard_negatives)


def make_batch(
    data: TrainingSet,
    rows: np.ndarray,
    positives: np.ndarray,
    shares: tuple[int, ...],
    rank: int,
    rng: np.random.Generator,
    random_negatives: int = 0,
    hard_negatives: int = 0,
) -> Batch:
    """A batch of len(positives) examples of which this rank holds data[rows] (its block of
    `shares`), `positives` being every example's catalogue row: random negatives drawn for the
    batch ∝ popularity^0.75, hard negatives per example from its user's unclicked impressions. The
    random draws are the whole batch's, so every rank (and one process) draws the same.

    logQ of a candidate j: log of its expected count among the B positives (drawn ∝ p_j) and the
    R random negatives (∝ q_j), B p_j + R q_j; without random negatives that is log p_j plus a
    constant the softmax ignores (Yi et al. 2019)."""
    cdf = np.cumsum(data.q)
    neg = np.minimum(np.searchsorted(cdf, rng.random(random_negatives) * cdf[-1], side="right"), len(cdf) - 1)
    cand = np.concatenate([positives, neg])
    expected = len(positives) * data.p[cand] + random_negatives * data.q[cand]
    lo = sum(shares[:rank])
    hard = _hard_negatives(data, rows, rng.random((len(positives), hard_negatives))[lo : lo + len(rows)])
    hard_t = torch.from_numpy(hard)
    idx_t, cand_t = torch.from_numpy(rows), torch.from_numpy(cand)
    return Batch(
        users=data.users[idx_t],
        seq=data.seq[idx_t],
        items=cand_t,
        features=data.item_table[cand_t],
        log_q=torch.from_numpy(np.log(expected)).float(),
        hard_items=hard_t,
        hard_features=data.item_table[hard_t.clamp(min=0)],
        shares=shares,
    )
