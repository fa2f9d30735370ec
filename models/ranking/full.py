"""The multi-objective full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)"): MMoE (Ma et al., KDD 2018) over user, item,
author and context embeddings plus the behaviour sequence pooled by candidate attention (DIN,
Zhou et al., KDD 2018); one logit per head (tasks.core.config.RANKING_HEADS).

An item (candidate or sequence entry) is the concatenation of its five embeddings (item id,
author, category_l1, category_l2, cluster), from the same tables for both. Attention weight of
sequence entry s for candidate c: MLP([s, c, s - c, s * c]), softmax over the non-padding entries
(an empty sequence pools to zeros). The input x = [user, candidate, context, interest] (and, with
`interaction`, interest * candidate: the elementwise product hands the experts the match between
the user's attended history and the candidate directly, which the concatenation leaves them to
learn) feeds `experts` expert MLPs; head k mixes them with its own softmax gate over x and maps the mixture
through its tower to a logit. Row 0 of every table is the unknown / padding row: zero, never
trained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
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
    interaction: bool = False  # x also holds interest * candidate (False: versions saved before it existed)


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(widths):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # linear output


class FullRanking(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch, d = arch, arch.dim
        self.emb = embedding_tables(arch.sizes, KINDS + CONTEXT_COLUMNS, d, INIT_STD, padding=True)
        item_d = d * len(ITEM_COLUMNS)
        self.attention = _mlp(4 * item_d, arch.tower_hidden, 1)
        n_in = d * (len(USER_COLUMNS) + len(CONTEXT_COLUMNS)) + (3 if arch.interaction else 2) * item_d
        self.experts = nn.ModuleList(
            nn.Sequential(_mlp(n_in, arch.expert_hidden, arch.expert_hidden), nn.ReLU()) for _ in range(arch.experts)
        )
        self.gates = nn.ModuleList(nn.Linear(n_in, arch.experts) for _ in range(arch.heads))
        self.towers = nn.ModuleList(_mlp(arch.expert_hidden, arch.tower_hidden, 1) for _ in range(arch.heads))

    def _embed(self, rows: Tensor, columns: tuple[str, ...]) -> Tensor:
        """(..., len(columns) * d): the concatenated embeddings of feature rows (..., len(columns))."""
        return torch.cat([self.emb[k](rows[..., i]) for i, k in enumerate(columns)], dim=-1)

    def attention_first_layer(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W_s, W_c, W_x, b): the attention MLP's first layer on [s, c, s - c, s * c] as
        W_s s + W_c c + W_x (s * c) + b, i.e. (W1 + W3, W2 - W3, W4, b)."""
        first, n = self.attention[0], self.arch.dim * len(ITEM_COLUMNS)
        w1, w2, w3, w4 = (first.weight[:, i * n : (i + 1) * n] for i in range(4))
        return w1 + w3, w2 - w3, w4, first.bias

    def interest(self, seq: Tensor, mask: Tensor, cand: Tensor) -> Tensor:
        """(B, 5d) attention pooling of sequence item vectors (B, L, 5d) for candidates (B, 5d);
        entries where `mask` (B, L) is False (padding) get no weight. The first layer is applied
        as in `attention_first_layer`, without materialising the (B, L, 20d) concatenation (3x faster)."""
        w_s, w_c, w_x, b = self.attention_first_layer()
        hidden = seq @ w_s.T + (cand @ w_c.T)[:, None, :] + (seq * cand[:, None, :]) @ w_x.T + b
        scores = self.attention[1:](hidden).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask
        return (weights[..., None] * seq).sum(1)

    def user_interest(self, seq: Tensor, mask: Tensor, cand: Tensor) -> Tensor:
        """(U, C, 5d) `interest` of C candidates per user (U, C, 5d) over the user's one sequence
        (U, L, 5d) with its mask (U, L). The first layer at entry l is linear in c:
        (W_x diag(s_l) + W_c) c + (W_s s_l + b), so each user's L stacked (H, 5d + 1) matrices
        (built once per user) times its candidates with a constant 1 give it in one batched product."""
        w_s, w_c, w_x, b = self.attention_first_layer()
        n_users, length, _ = seq.shape
        n_cand, width = cand.shape[1], len(b)
        per_entry = torch.cat([seq[:, :, None, :] * w_x + w_c, (seq @ w_s.T + b)[..., None]], dim=-1)
        ones = cand.new_ones((n_users, n_cand, 1))
        hidden = torch.cat([cand, ones], dim=-1) @ per_entry.reshape(n_users, length * width, -1).transpose(1, 2)
        scores = self.attention[1:](hidden.view(n_users, n_cand, length, width)).squeeze(-1)  # (U, C, L)
        weights = torch.softmax(scores.masked_fill(~mask[:, None], -1e9), dim=-1) * mask[:, None]
        return weights @ seq

    def heads(self, x: Tensor) -> Tensor:
        """(B, heads) logits of the MMoE input x (B, n_in): the experts mixed by each head's gate, then its tower."""
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        mixed = [(torch.softmax(g(x), dim=-1)[..., None] * experts).sum(1) for g in self.gates]
        return torch.cat([t(m) for t, m in zip(self.towers, mixed)], dim=1)

    def forward(self, users: Tensor, items: Tensor, context: Tensor, seq: Tensor) -> Tensor:
        """(B, heads) logits from feature rows: users (B, 4), items (B, 5), context (B, 3), seq (B, L, 5)."""
        cand = self._embed(items, ITEM_COLUMNS)
        interest = self.interest(self._embed(seq, ITEM_COLUMNS), (seq != 0).any(-1), cand)
        return self.heads(self.mmoe_input(self._embed(users, USER_COLUMNS), cand, self._embed(context, CONTEXT_COLUMNS),
                                          interest))

    def mmoe_input(self, user: Tensor, cand: Tensor, context: Tensor, interest: Tensor) -> Tensor:
        """x (B, n_in): [user, candidate, context, interest], and interest * candidate with `interaction`."""
        return torch.cat([user, cand, context, interest] + ([interest * cand] if self.arch.interaction else []), dim=1)

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


@torch.no_grad()
def predict_proba_by_user(model: FullRanking, users: np.ndarray, seq: np.ndarray, items: np.ndarray,
                          context: np.ndarray, row_user: np.ndarray, budget: int = 1 << 20) -> np.ndarray:
    """(n, heads) float32 probabilities of n (user, candidate) pairs, the user of pair i being row
    row_user[i] of users (U, 4) and seq (U, L, 5): `predict_proba` of (users[row_user], items,
    context, seq[row_user]), each user's rows and sequence embedded once and its candidates attended
    together (`FullRanking.user_interest`), in blocks of users of about `budget` attention cells."""
    model.eval()
    n, n_users = len(items), len(users)
    out = np.zeros((n, model.arch.heads), np.float32)
    if not n:
        return out
    order = np.argsort(row_user, kind="stable")
    counts = np.bincount(row_user, minlength=n_users)
    starts = np.r_[0, np.cumsum(counts)]
    slot = np.arange(n) - starts[row_user[order]]  # the pair's place among its user's candidates
    user_emb = model._embed(torch.from_numpy(users), USER_COLUMNS)
    seq_t = torch.from_numpy(seq)
    seq_emb, mask = model._embed(seq_t, ITEM_COLUMNS), (seq_t != 0).any(-1)
    step = max(1, budget // max(int(counts.max()) * seq.shape[1] * model.arch.tower_hidden, 1))
    for lo in range(0, n_users, step):
        hi = min(lo + step, n_users)
        pairs = order[starts[lo] : starts[hi]]
        if not len(pairs):
            continue
        local, place = torch.from_numpy(row_user[pairs] - lo), torch.from_numpy(slot[starts[lo] : starts[hi]])
        cand = model._embed(torch.from_numpy(items[pairs]), ITEM_COLUMNS)
        padded = cand.new_zeros((hi - lo, int(counts[lo:hi].max()), cand.shape[1]))
        padded[local, place] = cand
        interest = model.user_interest(seq_emb[lo:hi], mask[lo:hi], padded)[local, place]
        x = model.mmoe_input(user_emb[local + lo], cand, model._embed(torch.from_numpy(context[pairs]), CONTEXT_COLUMNS),
                             interest)
        out[pairs] = torch.sigmoid(model.heads(x)).numpy()
    return out
