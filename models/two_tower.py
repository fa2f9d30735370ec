"""Two-tower retrieval model (PLAYBOOK §2): vocabularies for external ids, the towers, the sampled
softmax loss with logQ correction (Yi et al., RecSys 2019), and saving / loading a version.

User tower: user id, gender, age bucket, city tier and the mean of the item-id embeddings of the
user's recent positives. Item tower: item id, author, category_l1, category_l2, content cluster.
Each tower is an MLP whose output is L2-normalised; score(u, i) = <u, v> / temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

USER_COLUMNS = ("user", "gender", "age_bucket", "city_tier")  # columns of a user feature row
ITEM_COLUMNS = ("item", "author", "category_l1", "category_l2", "content_cluster")  # of an item row
KINDS = USER_COLUMNS + ITEM_COLUMNS
WEIGHTS, VOCAB = "weights.pt", "vocab.npz"
M = TypeVar("M", bound=nn.Module)
INIT_STD = 0.1


class Vocab:
    """External ids (int64 or str) -> embedding rows: row r >= 1 holds ids[r - 1], row 0 = unknown."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        if len(self._sorted) and (self._sorted[1:] == self._sorted[:-1]).any():
            raise ValueError("a vocabulary lists an id twice")

    @classmethod
    def build(cls, values: np.ndarray) -> Vocab:
        """A fresh vocabulary of the distinct values, sorted."""
        return cls(np.unique(values))

    def __len__(self) -> int:
        """Embedding rows, the unknown row included."""
        return len(self.ids) + 1

    def rows(self, values: np.ndarray) -> np.ndarray:
        """int64 row of each value (0 for an id not in the vocabulary)."""
        values = np.asarray(values)
        if not len(self._sorted):
            return np.zeros(len(values), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == values, self._order[pos] + 1, 0).astype(np.int64)

    def extend(self, values: np.ndarray) -> Vocab:
        """This vocabulary with the new distinct values appended (sorted); old rows unchanged."""
        return Vocab(np.concatenate([self.ids, np.setdiff1d(np.unique(values), self.ids)]))


def _mlp(n_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


def user_inputs(emb: nn.ModuleDict, users: Tensor, seq: Tensor) -> Tensor:
    """A user tower's input (B, (len(USER_COLUMNS) + 1) * d): the embeddings of the user feature
    rows (B, 4) and the mean embedding of the recent items (B, L), 0 = padding (zeros when none)."""
    parts = [emb[kind](users[:, i]) for i, kind in enumerate(USER_COLUMNS)]
    table = emb["item"].weight
    if seq.shape[1]:
        parts.append(F.embedding_bag(seq, table, mode="mean", padding_idx=0))
    else:
        parts.append(table.new_zeros(len(users), table.shape[1]))
    return torch.cat(parts, dim=1)


class TwoTower(nn.Module):
    """The two towers; `sizes` gives the embedding rows per id kind (see KINDS)."""

    def __init__(self, sizes: Mapping[str, int], dim: int):
        super().__init__()
        self.emb = nn.ModuleDict({kind: nn.Embedding(sizes[kind], dim) for kind in KINDS})
        with torch.no_grad():
            for table in self.emb.values():
                nn.init.normal_(table.weight, std=INIT_STD)
                table.weight[0] = 0.0  # unknown ids: a neutral, never trained row
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
