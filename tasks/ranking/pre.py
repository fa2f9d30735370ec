"""Nightly pre-ranking training (docs/METHODS.md "Pre-ranker"): the multi-vector two-tower of models/ranking/pre.py
trained on the day's exposures (tasks.ranking.data), distilled from the full ranker, and published
as a version of the registry's `preranking` store.

Supervision: with a teacher (the full ranker's probabilities, one column per RANKING_HEADS head,
one row per exposure: the night's gated `distillation_predictions`, tasks.ranking.data.Teacher)
the version is "distilled": the pointwise target is (y + p) / 2 and
pairwise pairs are ordered by p. Without one (the distillation gate failed: the label-only
fallback) it is "label_only": the pointwise target is y and pairs are ordered by y.
cfg.ranking.preranking.loss picks pointwise, pairwise or both (their sum).

Pairs: candidates of the same user and day; up to `pairs_per_group` pairs per (user, day), drawn with
replacement, vectorised, inside batches made of whole (user, day) groups (days oldest first,
groups shuffled within a day).

Cold start (no current version, or warm_start off): `first_epochs` epochs on the exposures of the
given days (a night: its day). Aged ("old soup"): the current version's weights, vocabularies
extended by the new ids, 1 epoch on the given days after its training window.

Inputs: user id, gender, age bucket, city tier (load_users as of the last exposure day), the
user's last `ranking.full.sequence_length` clicks before the exposure's day (within
`retrieval.train_window_days` days), and the item's id, author, categories and cluster
(catalogue as of the last exposure day). The exposures and the teacher's predictions are read
from the lake in chunks of whole users of about `training.read_batch_rows` rows, each chunk's
inputs built from its users' clicks (`fit_streamed`, docs/SCALE.md "Training that streams"); with
`training.processes` > 1 the training is data parallel. Version files: weights.pt, vocab.npz, meta.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
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
from tasks.ranking.data import Teacher, examples_sql, exposure_chunks, exposure_stats, teacher_relation
from tasks.retrieval.data import connect_read, events_fingerprint, fingerprint, load_catalogue, load_events
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


def sequence_window(cfg: PlatformConfig, first: dt.date, last: dt.date) -> tuple[dt.date, dt.date]:
    """(first, last) day of the clicks the sequences of the exposures of first..last read: the
    `retrieval.train_window_days` days before `first` up to the day before `last`."""
    return first - dt.timedelta(days=cfg.retrieval.train_window_days), last - dt.timedelta(days=1)


def load_context(cfg: PlatformConfig, exposures: Exposures) -> Context:
    """Catalogue and user features as of the last exposure day, and the clicks of the
    `sequence_window`."""
    last = _day(exposures.day.max())
    sequence_first, sequence_last = sequence_window(cfg, _day(exposures.day.min()), last)
    with connect_read(cfg) as con:
        catalogue, users = load_catalogue(con, last), load_users(con, last)
        history = load_events(con, catalogue, SEQUENCE_EVENT, sequence_first, sequence_last)
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


def check_teacher(con: duckdb.DuckDBPyConnection, teacher: str, first: dt.date, last: dt.date,
                  targets: tuple[str, ...], examples: int) -> dict[str, float]:
    """ValueError unless the teacher (a relation of `con`, tasks.ranking.data.Teacher) has exactly
    one row per exposure of first..last, with finite probabilities in [0, 1] of the targets; the
    mean prediction per target."""
    cols = [f"p_{t}" for t in targets]
    missing = " or ".join(f"{c} is null" for c in cols)
    bad = " or ".join(f"isnan({c}) or {c} < 0 or {c} > 1" for c in cols)
    means = ", ".join(f"avg({c})" for c in cols)
    n, n_missing, n_bad, *mean = con.sql(
        f"select count(*), count(*) filter (where {missing}), count(*) filter (where not ({missing}) and ({bad})), "
        f"{means} from ({examples_sql(teacher, 'day between $first and $last')})",
        params={"first": first, "last": last}).fetchall()[0]
    span = f"teacher {teacher} on {first}..{last}"
    if n != examples:
        raise ValueError(f"{span}: {n - examples} rows more than the {examples} exposures "
                         "(duplicated (day, user_id, item_id) keys)")
    if n_missing:
        raise ValueError(f"{span}: {n_missing} of {examples} exposures have no prediction")
    if n_bad:
        raise ValueError(f"{span}: {n_bad} predictions are not finite probabilities in [0, 1] (the distillation "
                         "gate should have stopped this; train label-only instead)")
    return dict(zip(targets, map(float, mean)))


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


class Batch(NamedTuple):
    """One step: this rank's block of a batch's examples (all of them with one process) and the
    whole batch's supervision."""

    users: torch.Tensor  # (b, 4) user feature rows
    seq: torch.Tensor  # (b, L)
    items: torch.Tensor  # (b, 5)
    labels: torch.Tensor  # (B, T) 0/1 of the targets
    teacher: torch.Tensor | None  # (B, T) the full ranker's probabilities of the targets, or None
    group: np.ndarray  # (B,) (day, user) group id, each group's rows contiguous
    shares: tuple[int, ...]  # examples per rank, in rank order


def batch_loss(model: PreRanker, batch: Batch, pr: PreRankingConfig, rng: np.random.Generator) -> torch.Tensor:
    """The loss of one batch: pointwise, pairwise or both (pr.loss), over the logits of every rank's
    block (gathered in a process group)."""
    logits = training.gather_rows(model(batch.users, batch.seq, batch.items), batch.shares)
    total = logits.new_zeros(())
    if pr.loss in ("pointwise", "both"):
        total = total + pointwise_loss(logits, batch.labels, batch.teacher)
    if pr.loss in ("pairwise", "both"):
        first, second = (torch.from_numpy(a) for a in sample_pairs(batch.group, pr.pairs_per_group, rng))
        ref = batch.teacher if batch.teacher is not None else batch.labels
        total = total + pairwise_loss(logits[first], logits[second], torch.sign(ref[first] - ref[second]))
    return total


def chunk_inputs(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig, vocabs: Mapping[str, Vocab],
                 catalogue: Catalogue, users: UserTable, window: tuple[dt.date, dt.date], exposures: Exposures) -> Inputs:
    """The `inputs` of `exposures` (some of the training examples), the behaviour sequences from
    their users' clicks of the `sequence_window` of the training examples, read now."""
    history = load_events(con, catalogue, SEQUENCE_EVENT, *window, np.unique(exposures.user_id))
    return inputs(vocabs, Context(catalogue, users, history, window[0]), exposures, cfg.ranking.full.sequence_length)


def fit_streamed(cfg: PlatformConfig, model: PreRanker, vocabs: Mapping[str, Vocab], catalogue: Catalogue,
                 users: UserTable, first: dt.date, day: dt.date, teacher: Teacher, examples: int, epochs: int,
                 ) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Adam over `epochs` epochs (models.common.training.fit) of the `examples` exposures of
    first..day with the teacher's predictions, read from the lake in chunks of whole users of about
    `training.read_batch_rows` rows (tasks.ranking.data.exposure_chunks). Per chunk: `group_batches`;
    this rank's block of every batch (all of it with one process) gets its inputs (`chunk_inputs`).
    (The state dict, per-epoch mean loss per example and examples/s.)"""
    pr = cfg.ranking.preranking
    columns = _columns(tuple(pr.targets))
    rank, world = training.rank_world()
    rng = np.random.default_rng([pr.seed, day.toordinal()])
    window = sequence_window(cfg, first, day)
    with connect_read(cfg) as con:

        def epoch() -> Iterator[Batch]:
            for chunk, p in exposure_chunks(con, first, day, cfg.training.read_batch_rows, teacher):
                group = group_keys(chunk)
                cut = list(group_batches(group, chunk.day, pr.batch_size, rng))
                mine, local = training.shard(cut, rank, world)
                x = chunk_inputs(con, cfg, vocabs, catalogue, users, window, chunk.select(mine))
                labels = torch.from_numpy(np.ascontiguousarray(chunk.labels[:, columns]))
                taught = torch.from_numpy(np.ascontiguousarray(p[:, columns])) if p is not None else None
                for batch, block in zip(cut, local):
                    at = torch.from_numpy(batch)
                    yield Batch(*(torch.from_numpy(a[block]) for a in (x.users, x.seq, x.items)), labels[at],
                                taught[at] if taught is not None else None, group[batch],
                                training.shares(len(batch), world))

        history = training.fit(model, epoch, lambda batch: (batch_loss(model, batch, pr, rng), len(batch.labels)),
                               examples=examples, epochs=epochs, lr=pr.learning_rate, label=MODEL)
    return model.state_dict(), history


def train(cfg: PlatformConfig, day: dt.date, teacher: Teacher, first: dt.date | None = None,
          make_current: bool = False, store: Path | None = None) -> artifacts.Version:
    """Train on the exposures of first..day (default: `day` alone; aged: only the days after the
    parent's window), distilled from `teacher` (tasks.ranking.data.Teacher: the full ranker's
    probabilities, one row per exposure) or label-only (None), cold or aged (see the module doc),
    and publish a version in `store` (default: the registry's pre-ranking store), current only with
    make_current; with `training.processes` > 1 on that many processes
    (models.common.training.run), published once from rank 0's weights."""
    pr, store = cfg.ranking.preranking, store or registry.model_store(cfg, MODEL)
    targets = tuple(pr.targets)
    columns = _columns(targets)
    first = first or day
    if first > day:
        raise ValueError(f"preranking: the first training day {first} is after the training day {day}")
    parent = artifacts.current(store) if pr.warm_start else None
    if parent:
        parent_last = registry.trained_through(parent)
        if parent_last >= day:
            raise ValueError(f"preranking: current version {parent.name} has training window "
                             f"{parent.meta['training_window']}; aged training needs a later day than {day}")
        if tuple(parent.meta["targets"]) != targets:
            raise ValueError(f"preranking: cannot warm-start targets {list(targets)} from {parent.name} "
                             f"(targets {parent.meta['targets']})")
        first = max(first, parent_last + dt.timedelta(days=1))  # aged: only the days after its window
    epochs = 1 if parent else pr.first_epochs
    window = sequence_window(cfg, first, day)
    with connect_read(cfg) as con:
        stats = exposure_stats(con, first, day)
        if not stats.examples:
            raise ValueError(f"preranking: no ranking_exposures on {first}..{day} to train on"
                             + (f" (after {parent.name}'s window)" if parent else ""))
        catalogue, users = load_catalogue(con, day), load_users(con, day)
        source = teacher_relation(con, teacher)
        teacher_mean = check_teacher(con, source, first, day, targets, stats.examples) if source else None
        h = hashlib.sha256(f"{first}:{events_fingerprint(con, catalogue, SEQUENCE_EVENT, *window)}:{stats.digest}"
                           .encode())
        if source:
            cols = ", ".join(f"p_{t}" for t in targets)
            h.update(fingerprint(con, f"select day, user_id, item_id, {cols} from "
                                 f"({examples_sql(source, 'day between $first and $last')})",
                                 {"first": first, "last": day}).encode())
    torch.manual_seed(pr.seed)
    user_ids = stats.users
    if parent:
        old, old_vocabs = load_model(parent.path)
        if old.dim != pr.dim:
            raise ValueError(f"preranking: cannot warm-start dim {pr.dim} from a dim {old.dim} model")
        vocabs = build_vocabs(catalogue, users, user_ids, old_vocabs)
        model = extend_model(old, old_vocabs, vocabs)
    else:
        vocabs = build_vocabs(catalogue, users, user_ids)
        model = PreRanker({k: len(v) for k, v in vocabs.items()}, pr.dim, len(targets))
    supervision = "distilled" if source else "label_only"
    log.info("preranking %s %s training on %s..%s: %d examples, %d epoch(s), %s loss%s", "aged" if parent else "cold",
             supervision, first, day, stats.examples, epochs, pr.loss, f", from {parent.name}" if parent else "")
    state, epochs_log = training.run(cfg.training.processes, fit_streamed, cfg, model, vocabs, catalogue, users,
                                     first, day, teacher, stats.examples, epochs)
    model.load_state_dict(state)
    meta = {
        "model": MODEL,
        "config": {"preranking": pr.model_dump(mode="json"), "sequence_length": cfg.ranking.full.sequence_length,
                   "sequence_event": SEQUENCE_EVENT, "pairs_per_group": pr.pairs_per_group},
        "targets": list(targets),
        "loss": pr.loss,
        "supervision": supervision,
        "training_window": f"{first}..{day}",
        "sequence_window": f"{window[0]}..{day - dt.timedelta(days=1)}",
        "warm_started_from": parent.name if parent else None,
        "epochs": epochs,
        "examples": stats.examples,
        "label_rate": dict(zip(targets, map(float, stats.positives[columns] / stats.examples))),
        "teacher_mean": teacher_mean,
        "loss_per_epoch": [e["loss"] for e in epochs_log],
        "examples_per_s": [e["examples_per_s"] for e in epochs_log],
        "data_hash": h.hexdigest(),
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
