"""Nightly pre-ranking training (docs/METHODS.md "Pre-ranker"): the multi-vector two-tower of models/ranking/pre.py
trained on the day's exposures (tasks.ranking.data), distilled from the full ranker, and published
as a version of the registry's `preranking` store.

Supervision: with a teacher (the full ranker's probabilities, one column per RANKING_HEADS head,
aligned with the exposures) the version is "distilled": the pointwise target is (y + p) / 2 and
pairwise pairs are ordered by p. Without one (the distillation gate failed: the label-only
fallback) it is "label_only": the pointwise target is y and pairs are ordered by y.
cfg.ranking.preranking.loss picks pointwise, pairwise or both (their sum).

Pairs: candidates of the same user and day; up to `pairs_per_group` pairs per (user, day), drawn with
replacement, vectorised, inside batches made of whole (user, day) groups (days oldest first,
groups shuffled within a day).

Cold start (no current version, or warm_start off): `first_epochs` epochs on the given
exposures. Aged ("old soup"): the current version's weights, vocabularies extended by the new
ids, 1 epoch on the given exposures of the days after its training window.

Inputs: user id, gender, age bucket, city tier (load_users as of the last exposure day), the
user's last `ranking.full.sequence_length` clicks before the exposure's day (within
`retrieval.train_window_days` days), and the item's id, author, categories and cluster
(catalogue as of the last exposure day). Version files: weights.pt, vocab.npz, meta.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.common import training
from models.common.checkpoints import save_model
from models.common.features import build_vocabs, item_features, latest_sequences, lookup, to_item_rows, user_features
from models.common.tables import Catalogue, Events, Exposures, UserTable
from models.common.vocab import Vocab
from models.ranking.pre import PreRanker, extend_model, load_model, pairwise_loss, pointwise_loss, predict
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig, PreRankingConfig
from tasks.core.eval_metrics import auc
from tasks.retrieval.data import connect_read, data_hash, load_catalogue, load_events
from tasks.retrieval.two_tower import load_users

log = logging.getLogger(__name__)
MODEL = "preranking"
SEQUENCE_EVENT = "click"  # the behaviour sequence: the user's recent clicks


@dataclass(frozen=True)
class Context:
    """What the exposures' inputs are built from: catalogue, users, the clicks before each day."""

    catalogue: Catalogue
    users: UserTable
    history: Events
    sequence_first: dt.date


def load_context(cfg: PlatformConfig, exposures: Exposures) -> Context:
    """Catalogue and user features as of the last exposure day, and the clicks of the
    `retrieval.train_window_days` days before the first one up to the day before the last."""
    first, last = _day(exposures.day.min()), _day(exposures.day.max())
    sequence_first = first - dt.timedelta(days=cfg.retrieval.train_window_days)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, last)
        users = load_users(con, last)
        history = load_events(con, catalogue, SEQUENCE_EVENT, sequence_first, last - dt.timedelta(days=1))
    return Context(catalogue, users, history, sequence_first)


@dataclass(frozen=True)
class Inputs:
    """Model inputs of each exposure (vocabulary rows)."""

    users: np.ndarray  # (n, 4) user feature rows
    seq: np.ndarray  # (n, L) item rows of the user's recent clicks before the exposure's day, 0 = padding
    items: np.ndarray  # (n, 5) item feature rows (all 0 for an item outside the catalogue)


def inputs(vocabs: Mapping[str, Vocab], ctx: Context, exposures: Exposures, sequence_length: int) -> Inputs:
    """Feature rows and behaviour sequences (as of the start of each exposure's day)."""
    table = item_features(vocabs, ctx.catalogue)
    pos, known = lookup(exposures.item_id, ctx.catalogue.item_id)
    items = np.where(known[:, None], table[pos] if len(table) else 0, 0).astype(np.int64)
    seq = np.zeros((len(exposures), sequence_length), dtype=np.int64)
    for day in np.unique(exposures.day):
        rows = np.flatnonzero(exposures.day == day)
        before = ctx.history.select(ctx.history.day < day)
        seq[rows] = to_item_rows(latest_sequences(before, exposures.user_id[rows], sequence_length), table[:, 0])
    return Inputs(user_features(vocabs, ctx.users, exposures.user_id), seq, items)


def _day(value: np.datetime64) -> dt.date:
    return dt.date.fromisoformat(str(np.datetime64(value, "D")))


def _columns(targets: tuple[str, ...] | list[str]) -> list[int]:
    return [RANKING_HEADS.index(t) for t in targets]


def check_teacher(teacher: np.ndarray | None, exposures: Exposures, targets: tuple[str, ...]) -> None:
    """ValueError unless the teacher is None or (n, len(RANKING_HEADS)) probabilities in [0, 1]
    (finite on the target columns)."""
    if teacher is None:
        return
    if teacher.shape != (len(exposures), len(RANKING_HEADS)):
        raise ValueError(f"teacher has shape {teacher.shape}; expected {(len(exposures), len(RANKING_HEADS))} "
                         "(one row per exposure, one column per ranking head)")
    used = teacher[:, _columns(targets)]
    if not np.isfinite(used).all() or (used < 0).any() or (used > 1).any():
        raise ValueError("teacher predictions must be finite probabilities in [0, 1] (the distillation gate "
                         "should have stopped this; train label-only instead)")


# --- batches and pairs -------------------------------------------------------------------------


def group_keys(exposures: Exposures) -> np.ndarray:
    """(n,) int64 id of each exposure's (day, user) group."""
    _, inverse = np.unique(np.stack([exposures.day.astype(np.int64), exposures.user_id]), axis=1, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def group_batches(
    group: np.ndarray, day: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """One epoch of row indices in batches of whole groups: days oldest first, groups shuffled
    within a day, a batch closed once it holds batch_size rows or more (a bigger group alone).
    Within a batch the rows of a group are contiguous."""
    if not len(group):
        return
    n_groups = int(group.max()) + 1
    counts = np.bincount(group, minlength=n_groups)
    group_day = np.zeros(n_groups, dtype=np.int64)
    group_day[group] = day.astype(np.int64)
    order = np.lexsort((rng.random(n_groups), group_day))  # group ranks
    rank = np.empty(n_groups, dtype=np.int64)
    rank[order] = np.arange(n_groups)
    sizes = counts[order]
    batch_of_rank = (np.cumsum(sizes) - sizes) // batch_size
    rows = np.argsort(rank[group], kind="stable")
    row_batch = batch_of_rank[rank[group[rows]]]
    cuts = np.flatnonzero(np.diff(row_batch)) + 1
    yield from np.split(rows, cuts)


def sample_pairs(group: np.ndarray, per_group: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) positions into `group` (contiguous runs of equal ids) of candidate pairs
    of the same group, first != second: min(per_group, c(c-1)/2) pairs per group of c >= 2 rows,
    drawn uniformly with replacement."""
    if not len(group):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    counts = np.diff(np.r_[starts, len(group)])
    k = np.where(counts >= 2, np.minimum(per_group, counts * (counts - 1) // 2), 0)
    start, count = np.repeat(starts, k), np.repeat(counts, k)
    a = (rng.random(len(start)) * count).astype(np.int64)
    b = (rng.random(len(start)) * (count - 1)).astype(np.int64)
    b += b >= a  # uniform over the other rows
    return start + a, start + b


# --- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """Tensors of the training exposures (rows in exposure order)."""

    users: torch.Tensor  # (N, 4)
    seq: torch.Tensor  # (N, L)
    items: torch.Tensor  # (N, 5)
    labels: torch.Tensor  # (N, T) 0/1 of the targets
    teacher: torch.Tensor | None  # (N, T) the full ranker's probabilities of the targets, or None
    group: np.ndarray  # (N,) (day, user) group id
    day: np.ndarray  # (N,) datetime64[D]

    def __len__(self) -> int:
        return len(self.group)


def batch_loss(
    model: PreRanker, data: TrainingData, rows: np.ndarray, pr: PreRankingConfig, rng: np.random.Generator
) -> torch.Tensor:
    """The loss of one batch (rows with each group contiguous): pointwise, pairwise or both (pr.loss)."""
    idx = torch.from_numpy(rows)
    logits = model(data.users[idx], data.seq[idx], data.items[idx])
    labels = data.labels[idx]
    teacher = data.teacher[idx] if data.teacher is not None else None
    total = logits.new_zeros(())
    if pr.loss in ("pointwise", "both"):
        total = total + pointwise_loss(logits, labels, teacher)
    if pr.loss in ("pairwise", "both"):
        first, second = (torch.from_numpy(a) for a in sample_pairs(data.group[rows], pr.pairs_per_group, rng))
        ref = teacher if teacher is not None else labels
        total = total + pairwise_loss(logits[first], logits[second], torch.sign(ref[first] - ref[second]))
    return total


def fit(model: PreRanker, data: TrainingData, pr: PreRankingConfig, epochs: int, rng: np.random.Generator
        ) -> list[dict[str, float]]:
    """Adam over `epochs` epochs (models.common.training.fit); per epoch: mean loss (per example)
    and examples/s."""
    return training.fit(
        model, lambda: group_batches(data.group, data.day, pr.batch_size, rng),
        lambda rows: (batch_loss(model, data, rows, pr, rng), len(rows)),
        examples=len(data), epochs=epochs, lr=pr.learning_rate, label=MODEL,
    )


def _hash(ctx: Context, first: dt.date, exposures: Exposures, columns: list[int], teacher: np.ndarray | None) -> str:
    h = hashlib.sha256(data_hash(ctx.catalogue, first, ctx.history).encode())
    arrays = [exposures.user_id, exposures.item_id, exposures.shown_us, exposures.labels[:, columns]]
    for a in arrays + ([teacher[:, columns]] if teacher is not None else []):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def train(cfg: PlatformConfig, day: dt.date, exposures: Exposures, teacher: np.ndarray | None,
          make_current: bool = False, store: Path | None = None) -> artifacts.Version:
    """Train on `exposures` (days up to `day`), distilled from `teacher` ((n, len(RANKING_HEADS))
    float32 full-ranker probabilities aligned with the exposures) or label-only (None), cold or
    aged (see the module doc), and publish a version in `store` (default: the registry's
    pre-ranking store), current only with make_current."""
    pr, store = cfg.ranking.preranking, store or registry.model_store(cfg, MODEL)
    targets = tuple(pr.targets)
    columns = _columns(targets)
    check_teacher(teacher, exposures, targets)
    if not len(exposures):
        raise ValueError("preranking: no exposures to train on")
    if _day(exposures.day.max()) > day:
        raise ValueError(f"preranking: exposures of {exposures.day.max()} are after the training day {day}")
    parent = artifacts.current(store) if pr.warm_start else None
    if parent:
        parent_last = registry.trained_through(parent)
        if parent_last >= day:
            raise ValueError(f"preranking: current version {parent.name} has training window "
                             f"{parent.meta['training_window']}; aged training needs a later day than {day}")
        if tuple(parent.meta["targets"]) != targets:
            raise ValueError(f"preranking: cannot warm-start targets {list(targets)} from {parent.name} "
                             f"(targets {parent.meta['targets']})")
        keep = exposures.day > np.datetime64(parent_last, "D")  # aged: only the days after its window
        exposures = exposures.select(keep)
        teacher = teacher[keep] if teacher is not None else None
        if not len(exposures):
            raise ValueError(f"preranking: no exposures after {parent_last}, the end of {parent.name}'s window")
    epochs = 1 if parent else pr.first_epochs
    first = _day(exposures.day.min())
    ctx = load_context(cfg, exposures)
    torch.manual_seed(pr.seed)
    rng = np.random.default_rng([pr.seed, day.toordinal()])
    user_ids = np.unique(exposures.user_id)
    if parent:
        old, old_vocabs = load_model(parent.path)
        if old.dim != pr.dim:
            raise ValueError(f"preranking: cannot warm-start dim {pr.dim} from a dim {old.dim} model")
        vocabs = build_vocabs(ctx.catalogue, ctx.users, user_ids, old_vocabs)
        model = extend_model(old, old_vocabs, vocabs)
    else:
        vocabs = build_vocabs(ctx.catalogue, ctx.users, user_ids)
        model = PreRanker({k: len(v) for k, v in vocabs.items()}, pr.dim, len(targets))
    x = inputs(vocabs, ctx, exposures, cfg.ranking.full.sequence_length)
    used = teacher[:, columns] if teacher is not None else None
    data = TrainingData(
        users=torch.from_numpy(x.users), seq=torch.from_numpy(x.seq), items=torch.from_numpy(x.items),
        labels=torch.from_numpy(np.ascontiguousarray(exposures.labels[:, columns], dtype=np.float32)),
        teacher=torch.from_numpy(np.ascontiguousarray(used, dtype=np.float32)) if used is not None else None,
        group=group_keys(exposures), day=exposures.day,
    )
    supervision = "distilled" if teacher is not None else "label_only"
    log.info("preranking %s %s training on %s..%s: %d examples, %d epoch(s), %s loss%s", "aged" if parent else "cold",
             supervision, first, day, len(data), epochs, pr.loss, f", from {parent.name}" if parent else "")
    epochs_log = fit(model, data, pr, epochs, rng)
    meta = {
        "model": MODEL,
        "config": {"preranking": pr.model_dump(mode="json"), "sequence_length": cfg.ranking.full.sequence_length,
                   "sequence_event": SEQUENCE_EVENT, "pairs_per_group": pr.pairs_per_group},
        "targets": list(targets),
        "loss": pr.loss,
        "supervision": supervision,
        "training_window": f"{first}..{day}",
        "sequence_window": f"{ctx.sequence_first}..{day - dt.timedelta(days=1)}",
        "warm_started_from": parent.name if parent else None,
        "epochs": epochs,
        "examples": len(data),
        "label_rate": dict(zip(targets, map(float, exposures.labels[:, columns].mean(axis=0)))),
        "teacher_mean": dict(zip(targets, map(float, used.mean(axis=0)))) if used is not None else None,
        "loss_per_epoch": [e["loss"] for e in epochs_log],
        "examples_per_s": [e["examples_per_s"] for e in epochs_log],
        "data_hash": _hash(ctx, first, exposures, columns, teacher),
    }
    return artifacts.publish(store, lambda folder: save_model(folder, model, vocabs), meta, make_current=make_current)


# --- scoring and evaluation --------------------------------------------------------------------


def score(cfg: PlatformConfig, version: artifacts.Version, exposures: Exposures) -> np.ndarray:
    """(n, len(targets)) float32 probabilities of the version's targets (meta["targets"], in that
    order) for each exposure; ids the version never saw use its neutral unknown rows."""
    model, vocabs = load_model(version.path)
    if not len(exposures):
        return np.zeros((0, model.n_targets), np.float32)
    ctx = load_context(cfg, exposures)
    x = inputs(vocabs, ctx, exposures, version.meta["config"]["sequence_length"])
    return predict(model, x.users, x.seq, x.items)


def evaluate(cfg: PlatformConfig, version: artifacts.Version, exposures: Exposures) -> dict[str, float]:
    """AUC of each target on `exposures` (NaN for a target without both classes)."""
    probs = score(cfg, version, exposures)
    return {t: auc(exposures.label(t), probs[:, k]) for k, t in enumerate(version.meta["targets"])}
