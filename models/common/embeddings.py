"""Embedding tables every embedding model (two-tower, full ranker, pre-ranker) builds the same way,
and the user tower's input shared by the two-tower and the pre-ranker: user feature embeddings and
the mean embedding of the recent items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common.vocab import USER_COLUMNS

# Rows from which a table trains with sparse gradients and lazy Adam: a full-ranker step (batch 1024,
# 20 clicks of history, one thread) ran 25% slower sparse than dense at 2k-20k users, 43% faster at
# 200k and 3.4x faster at 1M (docs/SCALE.md "Training at 1M after sparse updates").
SPARSE_MIN_ROWS = 100_000


def embedding_tables(sizes: Mapping[str, int], kinds: Sequence[str], dim: int, std: float,
                     padding: bool = False) -> nn.ModuleDict:
    """One (sizes[kind], dim) table per kind, in `kinds` order, drawn from N(0, std²) (torch's
    global generator) with row 0 (unknown ids) zero; with `padding`, row 0 is also the padding row
    (never trained). A table of SPARSE_MIN_ROWS rows or more has sparse gradients (the rows a batch
    looks up), so a training step costs what the batch touches, not the vocabulary
    (models.common.training.optimizers); a smaller one is cheaper to update whole."""
    emb = nn.ModuleDict({kind: nn.Embedding(sizes[kind], dim, padding_idx=0 if padding else None,
                                            sparse=sizes[kind] >= SPARSE_MIN_ROWS) for kind in kinds})
    with torch.no_grad():
        for table in emb.values():
            nn.init.normal_(table.weight, std=std)
            table.weight[0] = 0.0  # unknown ids: a neutral row
    return emb


def user_inputs(emb: nn.ModuleDict, users: Tensor, seq: Tensor) -> Tensor:
    """A user tower's input (B, (len(USER_COLUMNS) + 1) * d): the embeddings of the user feature
    rows (B, 4) and the mean embedding of the recent items (B, L), 0 = padding (zeros when none)."""
    parts = [emb[kind](users[:, i]) for i, kind in enumerate(USER_COLUMNS)]
    table = emb["item"].weight
    if seq.shape[1]:
        parts.append(F.embedding_bag(seq, table, mode="mean", padding_idx=0, sparse=emb["item"].sparse))
    else:
        parts.append(table.new_zeros(len(users), table.shape[1]))
    return torch.cat(parts, dim=1)
