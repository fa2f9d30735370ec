"""Two-tower retrieval model (docs/METHODS.md "Two-tower"): vocabularies for external ids, the towers, the sampled
softmax loss with logQ correction (Yi et al., RecSys 2019), and saving / loading a version.

User tower: user id, gender, age bucket, city tier and the mean of the item-id embeddings of the
user's recent positives. Item tower: item id, author, category_l1, category_l2, content cluster.
Each tower is an MLP whose output is L2-normalised; score(u, i) = <u, v> / temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common.checkpoints import check_extension, grown, load_checkpoint
from models.common.embeddings import embedding_tables, user_inputs
from models.common.vocab import ITEM_COLUMNS, KINDS, USER_COLUMNS, Vocab

INIT_STD = 0.1


def _mlp(n_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


class TwoTower(nn.Module):
    """The two towers; `sizes` gives the embedding rows per id kind (see KINDS)."""

    def __init__(self, sizes: Mapping[str, int], dim: int):
        super().__init__()
        self.emb = embedding_tables(sizes, KINDS, dim, INIT_STD)
        self.user_mlp = _mlp(dim * (len(USER_COLUMNS) + 1), dim)  # + the pooled sequence
        self.item_mlp = _mlp(dim * len(ITEM_COLUMNS), dim)

    def encode_users(self, users: Tensor, seq: Tensor) -> Tensor:
        """(B, d) unit vectors from user feature rows (B, 4) and item rows of the recent positives
        (B, L), 0 = padding (mean over the non-padding entries; zeros when there are none)."""
        return F.normalize(self.user_mlp(user_inputs(self.emb, users, seq)), dim=-1)

    def encode_items(self, items: Tensor) -> Tensor:
        """(..., d) unit vectors from item feature rows (..., 5)."""
        parts = [self.emb[kind](items[..., i]) for i, kind in enumerate(ITEM_COLUMNS)]
        return F.normalize(self.item_mlp(torch.cat(parts, dim=-1)), dim=-1)


def sampled_softmax_loss(
    u: Tensor,
    pos_rows: Tensor,
    cand: Tensor,
    cand_rows: Tensor,
    temperature: float,
    cand_log_q: Tensor | None = None,
    hard: Tensor | None = None,
    hard_rows: Tensor | None = None,
) -> Tensor:
    """Mean cross-entropy of each user's positive against shared and per-user negatives.

    u (B, d): users; candidate i < B is user i's positive (the batch's positives, then any random
    negatives), cand (C, d) with item ids cand_rows (C,) and logQ corrections cand_log_q (C,):
    logit(u, j) = <u, v_j> / temperature - log_q_j. A candidate that is the same item as a user's
    positive is masked for that user (other than at its own position). hard (B, H, d): per-user
    negatives with item ids hard_rows (B, H), uncorrected, masked where -1 or equal to the positive.
    """
    n = len(u)
    logits = u @ cand.T / temperature
    if cand_log_q is not None:
        logits = logits - cand_log_q
    same = cand_rows[None, :] == pos_rows[:, None]
    same[:, :n].fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    if hard is not None and hard.shape[1]:
        h = (u[:, None, :] * hard).sum(-1) / temperature
        h = h.masked_fill((hard_rows < 0) | (hard_rows == pos_rows[:, None]), float("-inf"))
        logits = torch.cat([logits, h], dim=1)
    return F.cross_entropy(logits, torch.arange(n))


@torch.no_grad()
def user_vectors(model: TwoTower, users: np.ndarray, seq: np.ndarray, block: int = 8192) -> np.ndarray:
    """(n, d) float32 unit user vectors from feature rows (n, 4) and sequences (n, L), in blocks."""
    model.eval()
    out = [model.encode_users(torch.from_numpy(users[i : i + block]), torch.from_numpy(seq[i : i + block]))
           for i in range(0, len(users), block)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.item_mlp[-1].out_features), np.float32)


@torch.no_grad()
def item_vectors(model: TwoTower, items: np.ndarray, block: int = 8192) -> np.ndarray:
    """(n, d) float32 unit item vectors from feature rows (n, 5), in blocks."""
    model.eval()
    out = [model.encode_items(torch.from_numpy(items[i : i + block])) for i in range(0, len(items), block)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.item_mlp[-1].out_features), np.float32)


def extend_model(old: TwoTower, old_vocabs: Mapping[str, Vocab], vocabs: Mapping[str, Vocab], dim: int) -> TwoTower:
    """A model for the extended `vocabs`: old embedding rows and dense layers copied, new rows
    freshly initialised (draws from torch's global generator)."""
    if old.emb["user"].embedding_dim != dim:
        raise ValueError(f"cannot warm-start dim {dim} from a dim {old.emb['user'].embedding_dim} model")
    check_extension(old_vocabs, vocabs)
    return grown(TwoTower({k: len(v) for k, v in vocabs.items()}, dim), old)


def load_model(folder: Path) -> tuple[TwoTower, dict[str, Vocab]]:
    """The model and vocabularies of a saved version (weights_only: state dicts only)."""
    state, vocabs = load_checkpoint(folder)
    model = TwoTower({k: len(v) for k, v in vocabs.items()}, state["emb.user.weight"].shape[1])
    model.load_state_dict(state)
    return model.eval(), vocabs
