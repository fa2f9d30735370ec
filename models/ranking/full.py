"""The multi-objective full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)"): MMoE (Ma et al., KDD 2018) over user, item,
author and context embeddings plus the behaviour sequence pooled by candidate attention (DIN,
Zhou et al., KDD 2018); one logit per head (tasks.core.config.RANKING_HEADS).

An item (candidate or sequence entry) is the concatenation of its five embeddings (item id,
author, category_l1, category_l2, cluster), from the same tables for both. Attention weight of
sequence entry s for candidate c: MLP([s, c, s - c, s * c]), softmax over the non-padding entries
(an empty sequence pools to zeros). The input x = [user, candidate, context, interest] (and, with
`interaction`, interest * candidate: the elementwise product hands the experts the match between
the user's attended history and the candidate directly, which the concatenation leaves them to
learn; and, with `match_counts`, log(1 + the number of sequence entries sharing each item column with
the candidate): the softmax attention pools a weighted mean, which keeps what the history is like but
loses how much of it matches, the strongest click signal of a user's category interest, see
docs/METHODS.md "Full ranker (MMoE + DIN)") feeds `experts` expert MLPs; head k mixes them with its own
softmax gate over x and maps the mixture through its tower to a logit. Row 0 of every table is the unknown / padding row: zero, never
trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

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
    match_counts: bool = False  # x also holds `match_counts` (False: versions saved before it existed)


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
        n_in = (d * (len(USER_COLUMNS) + len(CONTEXT_COLUMNS)) + (3 if arch.interaction else 2) * item_d
                + (len(ITEM_COLUMNS) if arch.match_counts else 0))
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
        w, b = self.first_layer()
        return self.heads_after_first(F.linear(x, w, b))

    def first_layer(self) -> tuple[Tensor, Tensor]:
        """(W, b): every expert's first layer, then every gate, stacked: x W^T + b is (B, E*H + heads*E),
        the experts' pre-activations, then the gates' logits (one product instead of E + heads)."""
        w = torch.cat([e[0][0].weight for e in self.experts] + [g.weight for g in self.gates])
        b = torch.cat([e[0][0].bias for e in self.experts] + [g.bias for g in self.gates])
        return w, b

    def first_layer_blocks(self) -> tuple[dict[str, Tensor], Tensor]:
        """`first_layer`'s W split by the parts of x (`mmoe_input`): user, cand, context, interest
        and, with `interaction`, interaction (the columns of interest * cand), with `match_counts`,
        matches; and its b."""
        (w, b), d = self.first_layer(), self.arch.dim
        widths = {"user": d * len(USER_COLUMNS), "cand": d * len(ITEM_COLUMNS), "context": d * len(CONTEXT_COLUMNS),
                  "interest": d * len(ITEM_COLUMNS), **({"interaction": d * len(ITEM_COLUMNS)} if self.arch.interaction
                                                        else {}),
                  **({"matches": len(ITEM_COLUMNS)} if self.arch.match_counts else {})}
        return dict(zip(widths, torch.split(w, list(widths.values()), dim=1))), b

    def heads_after_first(self, first: Tensor) -> Tensor:
        """(B, heads) logits from x W^T + b of `first_layer` (B, E*H + heads*E): each expert's ReLU and
        second layer (batched over experts), the gates' softmax mixtures, the towers (batched over heads)."""
        n, e, h = len(first), self.arch.experts, self.arch.expert_hidden
        hidden = torch.relu(first[:, : e * h]).view(n, e, h).transpose(0, 1)  # (E, B, H)
        w2 = torch.stack([x[0][2].weight for x in self.experts])  # (E, H, H)
        b2 = torch.stack([x[0][2].bias for x in self.experts])[:, None]  # (E, 1, H)
        experts = torch.relu(torch.baddbmm(b2, hidden, w2.transpose(1, 2))).transpose(0, 1)  # (B, E, H)
        gates = _softmax_short(first[:, e * h :].view(n, self.arch.heads, e))  # (B, heads, E)
        mixed = (gates @ experts).transpose(0, 1)  # (heads, B, H)
        w3 = torch.stack([t[0].weight for t in self.towers])  # (heads, T, H)
        b3 = torch.stack([t[0].bias for t in self.towers])[:, None]  # (heads, 1, T)
        towers = torch.relu(torch.baddbmm(b3, mixed, w3.transpose(1, 2)))  # (heads, B, T)
        w4 = torch.stack([t[2].weight[0] for t in self.towers])[:, :, None]  # (heads, T, 1)
        b4 = torch.cat([t[2].bias for t in self.towers])  # (heads,)
        return torch.bmm(towers, w4)[..., 0].T + b4

    def forward(self, users: Tensor, items: Tensor, context: Tensor, seq: Tensor) -> Tensor:
        """(B, heads) logits from feature rows: users (B, 4), items (B, 5), context (B, 3), seq (B, L, 5)."""
        cand = self._embed(items, ITEM_COLUMNS)
        interest = self.interest(self._embed(seq, ITEM_COLUMNS), (seq != 0).any(-1), cand)
        matches = match_counts(seq, items) if self.arch.match_counts else None
        return self.heads(self.mmoe_input(self._embed(users, USER_COLUMNS), cand, self._embed(context, CONTEXT_COLUMNS),
                                          interest, matches))

    def mmoe_input(self, user: Tensor, cand: Tensor, context: Tensor, interest: Tensor,
                   matches: Tensor | None = None) -> Tensor:
        """x (B, n_in): [user, candidate, context, interest], then interest * candidate with
        `interaction` and `matches` (`match_counts`) with `match_counts`."""
        return torch.cat([user, cand, context, interest] + ([interest * cand] if self.arch.interaction else [])
                         + ([matches] if self.arch.match_counts else []), dim=1)

    def set_priors(self, rates: np.ndarray) -> None:
        """Start every head's output at the logit of its base rate (clipped away from 0 and 1)."""
        p = np.clip(rates, 1e-4, 1 - 1e-4)
        with torch.no_grad():
            for tower, logit in zip(self.towers, np.log(p / (1 - p))):
                tower[-1].bias.fill_(float(logit))


def _softmax_short(x: Tensor) -> Tensor:
    """torch.softmax(x, dim=-1) for a short last dimension (the gates' experts), as exp(x - max) / sum
    in whole-tensor operations: 3x faster there than torch's per-row kernel."""
    z = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return z / z.sum(dim=-1, keepdim=True)


def match_counts(seq: Tensor, items: Tensor) -> Tensor:
    """(B, 5) float32 log(1 + count) of the entries of seq (B, L, 5) sharing each item column's row
    with the candidate items (B, 5) (padding and unknown rows, 0, never match)."""
    same = (seq == items[:, None, :]) & (seq != 0)
    return torch.log1p(same.sum(1, dtype=torch.float32))


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
    together (`FullRanking.user_interest`), in blocks of users of about `budget` attention cells.
    The experts' and gates' first layer is split by the parts of x (`first_layer_blocks`): the
    user's, the candidate's and the context's products are computed once per distinct user, item
    and context row; per pair only the attended interest's (and the interaction's and the match
    counts') remain. The users are taken by sequence length and each block's sequences cut after its
    longest one: the padding entries past it get no weight, so the attention skips them (short
    histories, as new users have, attend a few entries, not `sequence_length`)."""
    model.eval()
    n, n_users = len(items), len(users)
    out = np.zeros((n, model.arch.heads), np.float32)
    if not n:
        return out
    seq_t = torch.from_numpy(seq)
    mask = (seq_t != 0).any(-1)
    lengths = np.where(mask.any(1).numpy(), seq.shape[1] - np.argmax(mask.numpy()[:, ::-1], axis=1), 0)
    by_length = np.argsort(lengths, kind="stable")  # users in blocks of like lengths
    rank = np.empty(n_users, np.int64)
    rank[by_length] = np.arange(n_users)
    row_rank = rank[row_user]
    order = np.argsort(row_rank, kind="stable")
    counts = np.bincount(row_rank, minlength=n_users)
    starts = np.r_[0, np.cumsum(counts)]
    slot = np.arange(n) - starts[row_rank[order]]  # the pair's place among its user's candidates
    blocks, bias = model.first_layer_blocks()
    user_part = model._embed(torch.from_numpy(users), USER_COLUMNS) @ blocks["user"].T + bias
    item_rows, item_of = _distinct_rows(items)
    item_emb = model._embed(torch.from_numpy(item_rows), ITEM_COLUMNS)
    item_part = item_emb @ blocks["cand"].T
    context_rows, context_of = _distinct_rows(context)
    context_part = model._embed(torch.from_numpy(context_rows), CONTEXT_COLUMNS) @ blocks["context"].T
    item_of, context_of = torch.from_numpy(item_of), torch.from_numpy(context_of)
    seq_emb = model._embed(seq_t, ITEM_COLUMNS)
    step = max(1, budget // max(int(counts.max()) * seq.shape[1] * model.arch.tower_hidden, 1))
    for lo in range(0, n_users, step):
        hi = min(lo + step, n_users)
        pairs = order[starts[lo] : starts[hi]]
        if not len(pairs):
            continue
        length = max(int(lengths[by_length[hi - 1]]), 1)  # the block's longest sequence (one padding entry if none)
        block = torch.from_numpy(by_length[lo:hi])
        local, place = torch.from_numpy(row_rank[pairs] - lo), torch.from_numpy(slot[starts[lo] : starts[hi]])
        of_pair = torch.from_numpy(pairs)
        cand = item_emb[item_of[of_pair]]
        padded = cand.new_zeros((hi - lo, int(counts[lo:hi].max()), cand.shape[1]))
        padded[local, place] = cand
        interest = model.user_interest(seq_emb[block, :length], mask[block, :length], padded)[local, place]
        first = (user_part[block[local]] + item_part[item_of[of_pair]] + context_part[context_of[of_pair]]
                 + interest @ blocks["interest"].T)
        if model.arch.interaction:
            first += (interest * cand) @ blocks["interaction"].T
        if model.arch.match_counts:
            first += match_counts(seq_t[row_user[pairs], :length], torch.from_numpy(items[pairs])) @ blocks["matches"].T
        out[pairs] = torch.sigmoid(model.heads_after_first(first)).numpy()
    return out


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of a non-negative int64 (n, k) array, the index of each row among them),
    through one int64 key per row (mixed radix; np.unique(axis=0) is ~40x slower)."""
    radix = [int(c.max()) + 1 if len(c) else 1 for c in rows.T]
    if math.prod(radix) >= 1 << 63:
        distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
        return distinct, inverse.ravel()
    key = np.zeros(len(rows), np.int64)
    for column, r in zip(rows.T, radix):
        key = key * r + column
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return rows[first], inverse
