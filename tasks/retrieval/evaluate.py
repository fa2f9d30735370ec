"""Offline evaluation of the retrieval channels (docs/METHODS.md "Offline retrieval evaluation"): fit on the positives of the
training window ending on day d, evaluate on the clicks of the following `eval_days` days.

Per channel and per user group ('all'; 'with_history' / 'without_history': users with / without a
positive in the training window; the user's segment on the first evaluation day, from dbt's
int_user_day_segments when it has been built), at every K of the config: Recall@K,
NDCG@K, HitRate@K, catalogue coverage@K and tail-item recall@K (tail = the least clicked
`tail_share` of the catalogue in training), next to the popularity baseline. Results go to the
warehouse table `retrieval_eval` (day, channel, version, segment, k, metric, value, n_users;
re-running a day replaces its rows) and to the report. The nightly gate also keeps each user's
Recall@K of the versions it compares in `retrieval_eval_users` (day, channel, version, k, user_id,
recall), so that the comparison can be paired over users.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from models.common.tables import Catalogue, Events
from models.retrieval.cf_channels import U2A2A2I, U2A2I, U2U2I
from models.retrieval.i2i import U2I2I
from models.retrieval.retriever import Popularity, Retriever
from models.retrieval.two_tower_retriever import TwoTowerRetriever
from tasks.core import eval_metrics as m
from tasks.core.config import ALL, PlatformConfig
from tasks.core.warehouse import replace_rows, table_names
from tasks.retrieval.data import connect_read, load_catalogue, load_events, load_follows, load_implicit_follows
from tasks.retrieval.two_tower import load_users, train

log = logging.getLogger(__name__)
RESULT_COLUMNS = ("day", "channel", "version", "segment", "k", "metric", "value", "n_users")
WARM, COLD = "with_history", "without_history"  # users with / without a training positive


@dataclass(frozen=True)
class EvalData:
    """Everything a channel is fitted on and judged by, for one evaluation day."""

    day: dt.date  # the last training day
    catalogue: Catalogue
    train: Events
    users: np.ndarray  # int64: users with at least one click on a catalogue item in the evaluation days
    truth: list[np.ndarray]  # per user, the catalogue rows clicked in the evaluation days
    segments: pd.DataFrame  # user_id, segment (the first evaluation day's memberships)
    tail: np.ndarray  # bool over catalogue rows
    follows: tuple[np.ndarray, np.ndarray]  # explicit (user_id, author_id) as of `day`
    implicit_follows: tuple[np.ndarray, np.ndarray, np.ndarray]  # (user_id, author_id, affinity) of `day`


def load_eval_data(cfg: PlatformConfig, day: dt.date, eval_days: int = 1) -> EvalData:
    """Training window and truth for an evaluation of `day` (read-only)."""
    first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        train = load_events(con, catalogue, cfg.retrieval.positive_event, first, day)
        future = load_events(con, catalogue, "click", day + dt.timedelta(days=1), day + dt.timedelta(days=eval_days))
        segments = _segments(con, day + dt.timedelta(days=1))
        follows, implicit = load_follows(con, day), load_implicit_follows(con, day)
    if not len(future):
        raise ValueError(f"evaluation of {day}: no clicks on the {eval_days} day(s) after it (data through {day}?)")
    order = np.argsort(future.user_id, kind="stable")
    users, starts = np.unique(future.user_id[order], return_index=True)
    truth = [np.unique(t) for t in np.split(future.item[order], starts[1:])]
    tail = m.tail_items(train.item, len(catalogue), cfg.evaluation.tail_share)
    log.info("evaluation %s: %d catalogue items, %d training positives (%s..%s), %d users with %d next-day clicks",
             day, len(catalogue), len(train), first, day, len(users), len(future))
    return EvalData(day, catalogue, train, users, truth, segments, tail, follows, implicit)


def _segments(con: duckdb.DuckDBPyConnection, day: dt.date) -> pd.DataFrame:
    tables = table_names(con)
    if "int_user_day_segments" not in tables:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "segment": pd.Series(dtype="str")})
    return con.execute("select user_id, segment from int_user_day_segments where day = ?", [day]).df()


def score_channel(data: EvalData, channel: Retriever, ks: tuple[int, ...], name: str | None = None,
                  version: str = "") -> pd.DataFrame:
    """Every metric of one fitted channel (reported as `name`, default its own; `version`: the
    registry version scored, '' for a fit on the spot), overall and per segment."""
    label = name or channel.name
    started = time.perf_counter()
    out = score_retrieved(data, channel.retrieve(data.users, max(ks)), ks, label, version)
    log.info("evaluated %s%s on %d users in %.1f s", label, f" {version}" if version else "", len(data.users), time.perf_counter() - started)
    return out


def score_retrieved(data: EvalData, retrieved: np.ndarray, ks: tuple[int, ...], label: str, version: str = "") -> pd.DataFrame:
    """`score_channel` of lists already retrieved for every user of `data` (catalogue rows, best first)."""
    warm = np.isin(data.users, data.train.user_id)
    groups = {ALL: np.arange(len(data.users)), WARM: np.flatnonzero(warm), COLD: np.flatnonzero(~warm)}
    groups = {name: rows for name, rows in groups.items() if len(rows) or name == ALL}
    for segment, ids in data.segments.groupby("segment").user_id:
        rows = np.flatnonzero(np.isin(data.users, ids.to_numpy()))
        if len(rows):
            groups[str(segment)] = rows
    records = []
    for segment, rows in groups.items():
        got, truth = retrieved[rows], [data.truth[i] for i in rows]
        for k in ks:
            values = {
                "recall": m.recall_at_k(got, truth, k),
                "ndcg": m.ndcg_at_k(got, truth, k),
                "hit_rate": m.hit_rate_at_k(got, truth, k),
                "coverage": m.coverage_at_k(got, k, len(data.catalogue)),
                "tail_recall": m.tail_recall_at_k(got, truth, k, data.tail),
            }
            records += [
                {"channel": label, "version": version, "segment": segment, "k": k, "metric": name, "value": value, "n_users": len(rows)}
                for name, value in values.items()
            ]
    return pd.DataFrame.from_records(records)


def user_recall(retrieved: np.ndarray, truth: list[np.ndarray], k: int) -> np.ndarray:
    """Per user, |top-k & truth| / |truth| (distinct truth items): the terms `recall_at_k` averages."""
    top = retrieved[:, :k]
    return np.array([np.isin(row[row >= 0], t).sum() / len(np.unique(t)) for row, t in zip(top, truth)], dtype=np.float64)


def user_recall_rows(data: EvalData, retrieved: np.ndarray, k: int, channel: str, version: str) -> pd.DataFrame:
    """`user_recall` as rows of `retrieval_eval_users`."""
    return pd.DataFrame({"day": data.day, "channel": channel, "version": version, "k": k, "user_id": data.users,
                         "recall": user_recall(retrieved, data.truth, k)})


ChannelBuilder = Callable[[PlatformConfig, EvalData], Retriever]


def popularity(cfg: PlatformConfig, data: EvalData) -> Retriever:
    """The baseline every channel is compared with."""
    return Popularity(data.train, len(data.catalogue))


def _two_tower(cfg: PlatformConfig, data: EvalData, **overrides: object) -> Retriever:
    """A cold two-tower trained on the window into a throwaway store (the registry is untouched)."""
    if overrides:
        tt = cfg.retrieval.two_tower.model_copy(update=overrides)
        cfg = cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={"two_tower": tt})})
    with connect_read(cfg) as con:
        users = load_users(con, data.day)
    with tempfile.TemporaryDirectory(prefix="recpipe-eval-") as store:
        version = train(cfg, data.day, store=Path(store))
        return TwoTowerRetriever(version, data.catalogue, data.train, users)


CHANNELS: dict[str, ChannelBuilder] = {
    "popularity": popularity,
    "itemcf": lambda cfg, d: U2I2I.itemcf(d.catalogue, d.train, cfg.retrieval),
    "swing": lambda cfg, d: U2I2I.swing(d.catalogue, d.train, cfg.retrieval),
    "u2u2i": lambda cfg, d: U2U2I(d.catalogue, d.train, cfg.retrieval),
    "u2a2i": lambda cfg, d: U2A2I(d.catalogue, d.train, cfg.retrieval, d.follows, d.implicit_follows),
    "u2a2a2i": lambda cfg, d: U2A2A2I(d.catalogue, d.train, cfg.retrieval, d.follows, d.implicit_follows),
    "two_tower": _two_tower,
}
# measured on demand (`recpipe evaluate --channels ...`), not every night
ABLATIONS: dict[str, ChannelBuilder] = {
    "two_tower_no_logq": lambda cfg, d: _two_tower(cfg, d, logq_correction=False),
}


def evaluate(cfg: PlatformConfig, day: dt.date, channels: list[str] | None = None, eval_days: int = 1) -> pd.DataFrame:
    """Fit each channel (default "all": every one of CHANNELS; ABLATIONS by name) on the window ending on
    `day` and score it on the following `eval_days` days; one row per (channel, segment, k, metric)."""
    builders = {**CHANNELS, **ABLATIONS}
    channels = [c for name in channels or ["all"] for c in (CHANNELS if name == "all" else [name])]
    unknown = sorted(set(channels) - set(builders))
    if unknown:
        raise ValueError(f"unknown channel(s) {', '.join(unknown)}; known: {', '.join(builders)}")
    data = load_eval_data(cfg, day, eval_days)
    frames = []
    for name in dict.fromkeys(channels):
        started = time.perf_counter()
        channel = builders[name](cfg, data)
        log.info("fitted %s in %.1f s", name, time.perf_counter() - started)
        frames.append(score_channel(data, channel, tuple(cfg.evaluation.k), name))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "day", day)
    return out


def write_results(cfg: PlatformConfig, results: pd.DataFrame) -> None:
    """Store results in `retrieval_eval`, replacing the rows of the same days, channels and versions."""
    replace_rows(cfg, "retrieval_eval", results[list(RESULT_COLUMNS)], ["day", "channel", "version"],
                 columns="day date, channel varchar, version varchar, segment varchar, k integer, metric varchar, "
                         "value double, n_users bigint, evaluated_at timestamp", stamp="evaluated_at")


def write_user_recall(cfg: PlatformConfig, rows: pd.DataFrame) -> None:
    """Store per-user recall rows in `retrieval_eval_users`, replacing those of the same days, channels and versions."""
    replace_rows(cfg, "retrieval_eval_users", rows, ["day", "channel", "version"],
                 columns="day date, channel varchar, version varchar, k integer, user_id bigint, recall double, "
                         "evaluated_at timestamp", stamp="evaluated_at")
