"""Saving, loading and warm-starting any embedding model (two-tower, full ranker, pre-ranker): a
version folder holds weights.pt (the state dict) and vocab.npz (the ids of every vocabulary)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from models.common.vocab import KINDS, Vocab

WEIGHTS, VOCAB = "weights.pt", "vocab.npz"


M = TypeVar("M", bound=nn.Module)


def check_extension(old_vocabs: Mapping[str, Vocab], vocabs: Mapping[str, Vocab]) -> None:
    """ValueError unless every vocabulary of `vocabs` starts with the old one's ids (warm start)."""
    for kind in KINDS:
        if not np.array_equal(vocabs[kind].ids[: len(old_vocabs[kind].ids)], old_vocabs[kind].ids):
            raise ValueError(f"vocabulary {kind!r} is not an extension of the old one")


def grown(new: M, old: nn.Module) -> M:
    """`new` (same architecture, larger embedding tables) with every parameter of `old` copied
    into its leading rows; the new rows keep their fresh initialisation."""
    state = new.state_dict()
    for key, value in old.state_dict().items():
        state[key][: len(value)] = value
    new.load_state_dict(state)
    return new


def save_model(folder: Path, model: nn.Module, vocabs: Mapping[str, Vocab]) -> None:
    """weights.pt (the state dict) and vocab.npz (the ids of every vocabulary); any of the
    embedding models (two-tower, full ranker, pre-ranker)."""
    torch.save(model.state_dict(), folder / WEIGHTS)
    np.savez(folder / VOCAB, **{kind: vocabs[kind].ids for kind in KINDS})


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Vocab]]:
    """The state dict (loaded with weights_only: tensors only) and vocabularies of a saved version."""
    state = torch.load(folder / WEIGHTS, weights_only=True)
    with np.load(folder / VOCAB, allow_pickle=False) as npz:
        return state, {kind: Vocab(npz[kind]) for kind in KINDS}
