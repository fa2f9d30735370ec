"""Offline evaluation of the retrieval channels (PLAYBOOK §2): fit on the positives of the
training window ending on day d, evaluate on the clicks of the following `eval_days` days.

Per channel and per segment (the user's segment on the first evaluation day, from dbt's
int_user_day_segments when it has been built; 'all' always), at every K of the config: Recall@K,
NDCG@K, HitRate@K, catalogue coverage@K and tail-item recall@K (tail = the least clicked
`tail_share` of the catalogue in training), next to the popularity baseline. Results go to the
warehouse table `retrieval_eval` (day, channel, version, segment, k, metric, value, n_users;
re-running a day replaces its rows) and to the report.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from models.retriever import Popularity, Retriever
from tasks import eval_metrics as m
from tasks.config import PlatformConfig
from tasks.retrieval_data import Catalogue, Events, connect_read, load_catalogue, load_events

log = logging.getLogger(__name__)
EVERYONE = "all"


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


def load_eval_data(cfg: PlatformConfig, day: dt.date, eval_days: int = 1) -> EvalData:
    """Training window and truth for an evaluation of `day` (read-only)."""
    first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        train = load_events(con, catalogue, cfg.retrieval.positive_event, first, day)
        future = load_events(con, catalogue, "click", day + dt.timedelta(days=1), day + dt.timedelta(days=eval_days))
        segments = _segments(con, day + dt.timedelta(days=1))
    if not len(future):
        raise ValueError(f"evaluation of {day}: no clicks on the {eval_days} day(s) after it (data through {day}?)")
    order = np.argsort(future.user_id, kind="stable")
    users, starts = np.unique(future.user_id[order], return_index=True)
    truth = [np.unique(t) for t in np.split(future.item[order], starts[1:])]
    tail = m.tail_items(train.item, len(catalogue), cfg.evaluation.tail_share)
    log.info("evaluation %s: %d catalogue items, %d training positives (%s..%s), %d users with %d next-day clicks",
             day, len(catalogue), len(train), first, day, len(users), len(future))
    return EvalData(day, catalogue, train, users, truth, segments, tail)


def _segments(con: duckdb.DuckDBPyConnection, day: dt.date) -> pd.DataFrame:
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    if "int_user_day_segments" not in tables:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "segment": pd.Series(dtype="str")})
    return con.execute("select user_id, segment from int_user_day_segments where day = ?", [day]).df()


def score_channel(data: EvalData, channel: Retriever, ks: tuple[int, ...]) -> pd.DataFrame:
    """Every metric of one fitted channel, overall and per segment."""
    started = time.perf_counter()
    retrieved = channel.retrieve(data.users, max(ks))
    groups = {EVERYONE: np.arange(len(data.users))}
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
                {"channel": channel.name, "segment": segment, "k": k, "metric": name, "value": value, "n_users": len(rows)}
                for name, value in values.items()
            ]
    log.info("evaluated %s on %d users in %.1f s", channel.name, len(data.users), time.perf_counter() - started)
    return pd.DataFrame.from_records(records)


ChannelBuilder = Callable[[PlatformConfig, EvalData], Retriever]


def popularity(cfg: PlatformConfig, data: EvalData) -> Retriever:
    """The baseline every channel is compared with."""
    return Popularity(data.train, len(data.catalogue))


CHANNELS: dict[str, ChannelBuilder] = {"popularity": popularity}


def evaluate(cfg: PlatformConfig, day: dt.date, channels: list[str] | None = None, eval_days: int = 1) -> pd.DataFrame:
    """Fit each channel (default: all registered) on the window ending on `day` and score it on
    the following `eval_days` days; one row per (channel, segment, k, metric)."""
    data = load_eval_data(cfg, day, eval_days)
    frames = []
    for name in channels or list(CHANNELS):
        started = time.perf_counter()
        channel = CHANNELS[name](cfg, data)
        log.info("fitted %s in %.1f s", name, time.perf_counter() - started)
        frames.append(score_channel(data, channel, tuple(cfg.evaluation.k)))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "day", day)
    return out


def write_results(cfg: PlatformConfig, results: pd.DataFrame) -> None:
    """Store results in `retrieval_eval`, replacing the rows of the same days and channels."""
    from tasks.warehouse import connect_writer

    with connect_writer(cfg) as con:
        con.execute(
            """
            create table if not exists retrieval_eval (
                day date, channel varchar, segment varchar, k integer, metric varchar,
                value double, n_users bigint, evaluated_at timestamp
            )
            """
        )
        con.register("results", results)
        con.execute("begin transaction")
        con.execute(
            "delete from retrieval_eval where (day, channel) in (select distinct day, channel from results)"
        )
        con.execute(
            "insert into retrieval_eval select day, channel, segment, k, metric, value, n_users, now() from results"
        )
        con.execute("commit")
