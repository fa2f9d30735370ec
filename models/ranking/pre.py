"""Pre-ranking model (docs/METHODS.md "Pre-ranker"): a cheap multi-vector two-tower distilled from the full ranker.

User tower: user id, gender, age bucket, city tier and the mean of the item-id embeddings of the
user's recent clicks -> MLP -> one vector u_t per target. Item tower: item id, author,
category_l1, category_l2, content cluster -> MLP -> one vector v. The score of target t is the
logit q_t = <u_t, v> + b_t, its probability sigmoid(q_t); no candidate attention, so item vectors
can be computed once per item and a user's T vectors once per request.

Losses (functions, so they can be checked by hand):
- pointwise: BCE against the distillation target (y + p) / 2 (y the observed label, p the full
  ranker's probability), or against y alone without a teacher (the label-only fallback);
- pairwise: for candidates i, j of the same user and day with p_i > p_j,
  log(1 + exp(-(q_i - q_j))).

Vocabularies, feature rows, sequences and embedding tables: shared with the two-tower (models/common).
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


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class PreRanker(nn.Module):
    """The two towers; `sizes` gives the embedding rows per id kind (models.common.vocab.KINDS)."""

    def __init__(self, sizes: Mapping[str, int], dim: int, n_targets: int):
        super().__init__()
        self.dim, self.n_targets = dim, n_targets
        self.emb = embedding_tables(sizes, KINDS, dim, INIT_STD)
        self.user_mlp = _mlp(dim * (len(USER_COLUMNS) + 1), 2 * dim, n_targets * dim)  # + the pooled sequence
        self.item_mlp = _mlp(dim * len(ITEM_COLUMNS), 2 * dim, dim)
        self.bias = nn.Parameter(torch.zeros(n_targets))

    def encode_users(self, users: Tensor, seq: Tensor) -> Tensor:
        """(B, T, d) user vectors from feature rows (B, 4) and the item rows of the recent clicks
        (B, L), 0 = padding (mean over the non-padding entries; zeros when there are none)."""
        return self.user_mlp(user_inputs(self.emb, users, seq)).view(len(users), self.n_targets, self.dim)

    def encode_items(self, items: Tensor) -> Tensor:
        """(..., d) item vectors from item feature rows (..., 5)."""
        parts = [self.emb[kind](items[..., i]) for i, kind in enumerate(ITEM_COLUMNS)]
        return self.item_mlp(torch.cat(parts, dim=-1))

    def forward(self, users: Tensor, seq: Tensor, items: Tensor) -> Tensor:
        """(B, T) logits q of B (user, item) examples: q_t = <u_t, v> + b_t."""
        return score_logits(self.encode_users(users, seq), self.encode_items(items), self.bias)


def score_logits(u: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """(B, T) logits from user vectors (B, T, d), item vectors (B, d) and per-target biases (T,)."""
    return (u * v[:, None, :]).sum(-1) + bias


def distillation_target(labels: Tensor, teacher: Tensor | None) -> Tensor:
    """The pointwise target: (y + p) / 2 with a teacher (clicked, p = 0.6 -> 0.8), y without."""
    return labels if teacher is None else (labels + teacher) / 2


def pointwise_loss(logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> Tensor:
    """Mean BCE of sigmoid(logits) against distillation_target(labels, teacher), all (B, T)."""
    return F.binary_cross_entropy_with_logits(logits, distillation_target(labels, teacher))


def pairwise_loss(q_first: Tensor, q_second: Tensor, order: Tensor) -> Tensor:
    """Mean over the ordered (pair, target) entries of log(1 + exp(-(q_hi - q_lo))).

    q_first, q_second (P, T): the logits of each pair's two candidates; order (P, T): +1 where the
    first should rank above the second (p_first > p_second), -1 for the reverse, 0 for a tie
    (not counted). Zero when nothing is ordered."""
    sign = order.to(q_first.dtype)
    valid = sign != 0
    losses = F.softplus(-sign * (q_first - q_second))  # log(1 + exp(-(q_hi - q_lo)))
    return (losses * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def predict(model: PreRanker, users: np.ndarray, seq: np.ndarray, items: np.ndarray, block: int = 8192) -> np.ndarray:
    """(n, T) float32 probabilities of n examples (feature rows, sequences, item rows), in blocks."""
    model.eval()
    out = [torch.sigmoid(model(*(torch.from_numpy(a[i : i + block]) for a in (users, seq, items))))
           for i in range(0, len(users), block)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.n_targets), np.float32)


def extend_model(old: PreRanker, old_vocabs: Mapping[str, Vocab], vocabs: Mapping[str, Vocab]) -> PreRanker:
    """A model for the extended `vocabs`: old embedding rows, dense layers and biases copied, new
    rows freshly initialised (draws from torch's global generator)."""
    check_extension(old_vocabs, vocabs)
    return grown(PreRanker({k: len(v) for k, v in vocabs.items()}, old.dim, old.n_targets), old)


def load_model(folder: Path) -> tuple[PreRanker, dict[str, Vocab]]:
    """The model and vocabularies of a saved version (weights_only: state dicts only)."""
    state, vocabs = load_checkpoint(folder)
    model = PreRanker({k: len(v) for k, v in vocabs.items()}, state["emb.user.weight"].shape[1], len(state["bias"]))
    model.load_state_dict(state)
    return model.eval(), vocabs
