"""Models for special user groups next to the full ranker (docs/METHODS.md "Special user groups"), over cheap features:

- the residual model ("large + small"): a linear layer or a tiny MLP whose outputs are added to
  the full ranker's logits of its heads: final logit = full-ranker logit + residual output. Its
  output layer starts at zero, so an untrained residual model is the full ranker;
- the GBDT calibrator: per head, gradient-boosted trees mapping (full-ranker logit, a few cheap
  features) to the probability of the label, monotone increasing in the logit.

Cheap features of an exposure, as small integer codes (0 = unknown): the user's gender, age
bucket and city tier, the item's category_l1 (by name, against the list a model was trained
with), the item's age at the impression and the feed position (the full ranker's context buckets,
models/ranking/features.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import skops.io as sio
import torch
from torch import Tensor, nn

from models.common.features import lookup
from models.common.tables import Catalogue, Exposures, UserTable
from models.ranking.features import CONTEXT_SIZES, context_features
from tasks.core.contract import AGE_BUCKETS, GENDERS

CITY_TIERS = tuple(range(6))  # the contract's city tiers 0..5
LOGIT_CLIP = 15.0  # full-ranker logits enter the small models clipped to +-this
CHEAP_COLUMNS = ("gender", "age_bucket", "city_tier", "category_l1", "item_age", "position")
RESIDUAL_WEIGHTS = "residual.pt"
RESIDUAL_ARCH = "residual.json"
CALIBRATOR_SPEC = "calibrator.json"
# The only types a calibrator file may hold beyond skops' default trusted ones (numpy, builtins,
# scikit-learn estimators): the fitted trees of HistGradientBoostingClassifier and the input
# check of its categorical preprocessing (a functools.partial of sklearn's check_array; skops
# checks the partial's function and arguments against the list too).
SKOPS_TRUSTED = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "functools.partial",
    "sklearn.utils.validation.check_array",
)


@dataclass(frozen=True)
class CheapFeatures:
    """(n, len(CHEAP_COLUMNS)) int64 codes of n exposures, 0 = unknown, columns CHEAP_COLUMNS."""

    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    def column(self, name: str) -> np.ndarray:
        return self.codes[:, CHEAP_COLUMNS.index(name)]

    def select(self, rows: np.ndarray) -> CheapFeatures:
        return CheapFeatures(self.codes[rows])


def cardinalities(l1_names: Sequence[str]) -> dict[str, int]:
    """Codes per cheap column, the unknown code 0 included."""
    return {"gender": len(GENDERS) + 1, "age_bucket": len(AGE_BUCKETS) + 1, "city_tier": len(CITY_TIERS) + 1,
            "category_l1": len(l1_names) + 1, "item_age": CONTEXT_SIZES["item_age"],
            "position": CONTEXT_SIZES["position"]}


def _codes(values: np.ndarray, known: Sequence) -> np.ndarray:
    """1 + the index of each value in `known`, 0 when absent."""
    table = {v: i + 1 for i, v in enumerate(known)}
    return np.fromiter((table.get(v, 0) for v in values.tolist()), dtype=np.int64, count=len(values))


def cheap_features(exposures: Exposures, users: UserTable, catalogue: Catalogue,
                   l1_names: Sequence[str]) -> CheapFeatures:
    """The codes of `exposures`: users missing from `users` and items missing from `catalogue` get
    0 for their columns, categories not in `l1_names` too."""
    out = np.zeros((len(exposures), len(CHEAP_COLUMNS)), dtype=np.int64)
    pos, known = lookup(exposures.user_id, users.user_id)
    for col, (values, vocab) in enumerate(((users.gender, GENDERS), (users.age_bucket, AGE_BUCKETS),
                                           (users.city_tier, CITY_TIERS))):
        if len(values):
            out[known, col] = _codes(np.asarray(values)[pos[known]], vocab)
    rows, found = lookup(exposures.item_id, catalogue.item_id)
    if len(catalogue):
        names = np.asarray(catalogue.l1_names, dtype=object)[catalogue.category_l1[rows[found]]]
        out[found, 3] = _codes(names, tuple(l1_names))
    context = context_features(exposures, catalogue)  # position bucket, hour, item age bucket
    out[:, 4], out[:, 5] = context[:, 2], context[:, 0]
    return CheapFeatures(out)


def clipped(logits: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(logits, nan=0.0), -LOGIT_CLIP, LOGIT_CLIP).astype(np.float32)


# The residual model --------------------------------------------------------------------------
@dataclass(frozen=True)
class ResidualArchitecture:
    l1_names: tuple[str, ...]  # category_l1 names, in code order (code = index + 1)
    logit_heads: int  # full-ranker logits in the input (all of its heads)
    heads: tuple[int, ...]  # the full-ranker head columns the residual is added to
    hidden: int  # 0: a linear layer

    @property
    def n_inputs(self) -> int:
        return sum(cardinalities(self.l1_names).values()) + self.logit_heads


def residual_inputs(arch: ResidualArchitecture, cheap: CheapFeatures, full_logits: np.ndarray) -> np.ndarray:
    """(n, arch.n_inputs) float32: the one-hot codes of every cheap column, then the full ranker's
    (clipped) logits."""
    parts, sizes = [], cardinalities(arch.l1_names)
    for col, name in enumerate(CHEAP_COLUMNS):
        onehot = np.zeros((len(cheap), sizes[name]), np.float32)
        onehot[np.arange(len(cheap)), np.minimum(cheap.codes[:, col], sizes[name] - 1)] = 1.0
        parts.append(onehot)
    parts.append(clipped(full_logits))
    return np.concatenate(parts, axis=1)


class ResidualModel(nn.Module):
    """x (B, n_inputs) -> (B, len(heads)) residual logits; the output layer starts at zero."""

    def __init__(self, arch: ResidualArchitecture):
        super().__init__()
        self.arch = arch
        n_out = len(arch.heads)
        if arch.hidden:
            self.net = nn.Sequential(nn.Linear(arch.n_inputs, arch.hidden), nn.ReLU(), nn.Linear(arch.hidden, n_out))
        else:
            self.net = nn.Sequential(nn.Linear(arch.n_inputs, n_out))
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def combine(self, full_logits: Tensor, x: Tensor) -> Tensor:
        """(B, logit_heads): the full ranker's logits plus this model's output on its heads."""
        out = full_logits.clone()
        out[:, list(self.arch.heads)] += self(x)
        return out


def save_residual(folder: Path, model: ResidualModel) -> None:
    torch.save(model.state_dict(), folder / RESIDUAL_WEIGHTS)
    (folder / RESIDUAL_ARCH).write_text(json.dumps(asdict(model.arch), indent=2))


def load_residual(folder: Path) -> ResidualModel:
    """The model (eval mode) of a saved version (weights_only: tensors only)."""
    raw = json.loads((folder / RESIDUAL_ARCH).read_text())
    arch = ResidualArchitecture(tuple(raw["l1_names"]), int(raw["logit_heads"]), tuple(raw["heads"]),
                                int(raw["hidden"]))
    model = ResidualModel(arch)
    model.load_state_dict(torch.load(folder / RESIDUAL_WEIGHTS, weights_only=True))
    return model.eval()


@torch.no_grad()
def residual_output(model: ResidualModel, x: np.ndarray, block: int = 8192) -> np.ndarray:
    """(n, len(heads)) float32 residual logits, in blocks."""
    model.eval()
    out = [model(torch.from_numpy(x[i : i + block])) for i in range(0, len(x), block)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.arch.heads)), np.float32)


# The GBDT calibrator -------------------------------------------------------------------------
CALIBRATOR_COLUMNS = ("logit", "category_l1", "item_age", "position", "city_tier")
CALIBRATOR_CATEGORICAL = (False, True, False, False, False)
CALIBRATOR_MONOTONE = (1, 0, 0, 0, 0)  # increasing in the full ranker's logit


def calibrator_inputs(cheap: CheapFeatures, logit: np.ndarray) -> np.ndarray:
    """(n, len(CALIBRATOR_COLUMNS)) float64: the head's clipped full-ranker logit, then cheap codes
    (an unknown category is missing: NaN)."""
    x = np.empty((len(cheap), len(CALIBRATOR_COLUMNS)), np.float64)
    x[:, 0] = clipped(logit)
    cat = cheap.column("category_l1").astype(np.float64) - 1
    x[:, 1] = np.where(cat >= 0, cat, np.nan)
    for col, name in enumerate(CALIBRATOR_COLUMNS[2:], start=2):
        x[:, col] = cheap.column(name)
    return x


def save_gbdt(path: Path, model) -> None:
    """A fitted HistGradientBoostingClassifier in skops' format (no pickle)."""
    path.write_bytes(sio.dumps(model))


def load_gbdt(path: Path):
    """Load a calibrator file written by save_gbdt; refuses any type beyond SKOPS_TRUSTED and
    skops' defaults (so loading runs no code of the file's choosing)."""
    data = path.read_bytes()
    unexpected = sorted(set(sio.get_untrusted_types(data=data)) - set(SKOPS_TRUSTED))
    if unexpected:
        raise ValueError(f"{path}: untrusted types {unexpected}")
    return sio.loads(data, trusted=list(SKOPS_TRUSTED))
