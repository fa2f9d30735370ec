"""The multi-objective full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)"): MMoE (Ma et al., KDD 2018) over user, item,
author and context embeddings plus the behaviour sequence pooled by candidate attention (DIN,
Zhou et al., KDD 2018); one logit per head (tasks.core.config.RANKING_HEADS).

An item (candidate or sequence entry) is the concatenation of its five embeddings (item id,
author, category_l1, category_l2, cluster), from the same tables for both. Attention weight of
sequence entry s for candidate c: MLP([s, c, s - c, s * c]), softmax over the non-padding entries
(an empty sequence pools to zeros). The input x = [user, candidate, context, interest] feeds
`experts` expert MLPs; head k mixes them with its own softmax gate over x and maps the mixture
through its tower to a logit. Row 0 of every table is the unknown / padding row: zero, never
trained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models.common.checkpoints import check_extension, grown, load_checkpoint
from models.common.checkpoints import save_model as save_weights
from models.common.embeddings import embedding_tables
from models.common.vocab import ITEM_COLUMNS, KINDS, USER_COLUMNS, Vocab
from models.ranking.features import CONTEXT_COLUMNS, CONTEXT_SIZES

ARCHITECTURE = "architecture.json"
INIT_STD = 0.05


@dataclass(frozen=True)
class Architecture:
    sizes: dict[str, int]  # embedding rows per kind (KINDS and CONTEXT_COLUMNS), the zero row included
    heads: int
    dim: int
    experts: int
    expert_hidden: int
    tower_hidden: int


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # linear output


class FullRanking(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch, d = arch, arch.dim
        self.emb = embedding_tables(arch.sizes, KINDS + CONTEXT_COLUMNS, d, INIT_STD, padding=True)
        item_d = d * len(ITEM_COLUMNS)
        self.attention = _mlp(4 * item_d, arch.tower_hidden, 1)
        n_in = d * (len(USER_COLUMNS) + len(CONTEXT_COLUMNS)) + 2 * item_d
        self.experts = nn.ModuleList(
            nn.Sequential(_mlp(n_in, arch.expert_hidden, arch.expert_hidden), nn.ReLU()) for _ in range(arch.experts)
        )
        self.gates = nn.ModuleList(nn.Linear(n_in, arch.experts) for _ in range(arch.heads))
        self.towers = nn.ModuleList(_mlp(arch.expert_hidden, arch.tower_hidden, 1) for _ in range(arch.heads))

    def _embed(self, rows: Tensor, columns: tuple[str, ...]) -> Tensor:
        """(..., len(columns) * d): the concatenated embeddings of feature rows (..., len(columns))."""
        return torch.cat([self.emb[k](rows[..., i]) for i, k in enumerate(columns)], dim=-1)

    def interest(self, seq: Tensor, mask: Tensor, cand: Tensor) -> Tensor:
        """(B, 5d) attention pooling of sequence item vectors (B, L, 5d) for candidates (B, 5d);
        entries where `mask` (B, L) is False (padding) get no weight. The attention MLP reads
        [s, c, s - c, s * c]; its first layer is applied as (W1 + W3) s + (W2 - W3) c + W4 (s * c),
        the same function without materialising the (B, L, 20d) concatenation (3x faster)."""
        first, n = self.attention[0], seq.shape[-1]
        w1, w2, w3, w4 = (first.weight[:, i * n : (i + 1) * n] for i in range(4))
        hidden = (seq @ (w1 + w3).T + (cand @ (w2 - w3).T)[:, None, :] + (seq * cand[:, None, :]) @ w4.T
                  + first.bias)
        scores = self.attention[1:](hidden).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask
        return (weights[..., None] * seq).sum(1)

    def forward(self, users: Tensor, items: Tensor, context: Tensor, seq: Tensor) -> Tensor:
        """(B, heads) logits from feature rows: users (B, 4), items (B, 5), context (B, 3), seq (B, L, 5)."""
        cand = self._embed(items, ITEM_COLUMNS)
        x = torch.cat([
            self._embed(users, USER_COLUMNS), cand, self._embed(context, CONTEXT_COLUMNS),
            self.interest(self._embed(seq, ITEM_COLUMNS), (seq != 0).any(-1), cand),
        ], dim=1)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        mixed = [(torch.softmax(g(x), dim=-1)[..., None] * experts).sum(1) for g in self.gates]
        return torch.cat([t(m) for t, m in zip(self.towers, mixed)], dim=1)

    def set_priors(self, rates: np.ndarray) -> None:
        """Start every head's output at the logit of its base rate (clipped away from 0 and 1)."""
        p = np.clip(rates, 1e-4, 1 - 1e-4)
        with torch.no_grad():
            for tower, logit in zip(self.towers, np.log(p / (1 - p))):
                tower[-1].bias.fill_(float(logit))


def sizes(vocabs: Mapping[str, Vocab]) -> dict[str, int]:
    """Embedding rows per kind: the vocabularies' and the fixed context tables'."""
    return {**{k: len(v) for k, v in vocabs.items()}, **CONTEXT_SIZES}


def extend_model(old: FullRanking, old_vocabs: Mapping[str, Vocab], vocabs: Mapping[str, Vocab]) -> FullRanking:
    """A model for the extended `vocabs`: old embedding rows and dense layers copied, new rows
    freshly initialised (from torch's global generator)."""
    check_extension(old_vocabs, vocabs)
    return grown(FullRanking(Architecture(**{**asdict(old.arch), "sizes": sizes(vocabs)})), old)


def save_model(folder: Path, model: FullRanking, vocabs: Mapping[str, Vocab]) -> None:
    """weights.pt (the state dict), vocab.npz (the ids of every vocabulary), architecture.json."""
    save_weights(folder, model, vocabs)
    (folder / ARCHITECTURE).write_text(json.dumps(asdict(model.arch), indent=2))


def load_model(folder: Path) -> tuple[FullRanking, dict[str, Vocab]]:
    """The model (in eval mode) and vocabularies of a saved version (weights_only: tensors only)."""
    state, vocabs = load_checkpoint(folder)
    model = FullRanking(Architecture(**json.loads((folder / ARCHITECTURE).read_text())))
    model.load_state_dict(state)
    return model.eval(), vocabs


@torch.no_grad()
def predict_proba(model: FullRanking, users: np.ndarray, items: np.ndarray, context: np.ndarray, seq: np.ndarray,
                  block: int = 512) -> np.ndarray:
    """(n, heads) float32 probabilities, in blocks."""
    model.eval()
    out = [torch.sigmoid(model(*(torch.from_numpy(a[i : i + block]) for a in (users, items, context, seq))))
           for i in range(0, len(users), block)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.arch.heads), np.float32)
