"""Offline evaluation of the retrieval channels (docs/METHODS.md "Offline retrieval evaluation"): fit on the positives of the
training window ending on day d, evaluate on the clicks of the following `eval_days` days.

Per channel and per user group ('all'; 'with_history' / 'without_history': users with / without a
positive in the training window; each segment, a user's memberships being those of the first
evaluation day on which the user clicks, from dbt's int_user_day_segments when it has been built),
at every K of the config: Recall@K, NDCG@K, HitRate@K, catalogue coverage@K and tail-item
recall@K (tail = the least clicked `tail_share` of the catalogue in training), next to the
popularity baseline. Each value carries the users it averages over (`n_users`), a percentile
bootstrap CI over those users (`ci_low`, `ci_high`; none for coverage, which is not a mean over
users) and `below_min_users` (fewer than evaluation.min_users: a warning is logged). Results go to
the warehouse table `retrieval_eval`, one run per (day, eval_days, train_window_days, channel,
version): a run with other settings or of another day is added to the history, re-running the same
one replaces its rows. The nightly gate also keeps each user's Recall@K of the versions it
compares in `retrieval_eval_users` (day, channel, version, k, user_id, recall), so that the
comparison can be paired over users.

Clicks on exposures the recommendation path chose (events.channel naming its retrieval channels)
favour what served them: tomorrow's clicks fall on today's feeds (docs/METHODS.md "Closed-loop
feedback in the gates"). `EvalData.unchosen` keeps, per user, the clicks no model chose: on
impressions of the organic policy (channel null, or organic fill beyond a feed) and of exploration
slots (drawn at random from their pool).
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
from tasks.core.config import ALL, EvaluationConfig, PlatformConfig
from tasks.core.hashing import splitmix64
from tasks.core.warehouse import model_chosen, replace_rows, table_names
from tasks.retrieval.data import connect_read, load_catalogue, load_events, load_follows, load_implicit_follows
from tasks.retrieval.two_tower import load_users, train

log = logging.getLogger(__name__)
RUN_KEY = ("day", "eval_days", "train_window_days")  # with channel and version: one evaluation run
UNCHOSEN = "recall_unchosen"  # metric: Recall@K on the clicks no model chose (days with served clicks)
SAMPLE_SALT = 0x6576616C  # evaluation_sample's hash: its own, not the experiments' assignment
RESULT_COLUMNS = (*RUN_KEY, "channel", "version", "segment", "k", "metric", "value", "ci_low", "ci_high", "n_users",
                  "below_min_users")
WARM, COLD = "with_history", "without_history"  # users with / without a training positive


@dataclass(frozen=True)
class EvalData:
    """Everything a channel is fitted on and judged by, for one evaluation day."""

    day: dt.date  # the last training day
    eval_days: int  # truth: the clicks of day + 1 .. day + eval_days
    train_window_days: int  # training: the positives of the train_window_days days through day
    catalogue: Catalogue
    train: Events
    users: np.ndarray  # int64: users with at least one click on a catalogue item in the evaluation days
    truth: list[np.ndarray]  # per user, the catalogue rows clicked in the evaluation days
    segments: pd.DataFrame  # user_id, segment (memberships on the user's first evaluation day with a click)
    tail: np.ndarray  # bool over catalogue rows
    follows: tuple[np.ndarray, np.ndarray]  # explicit (user_id, author_id) as of `day`
    implicit_follows: tuple[np.ndarray, np.ndarray, np.ndarray]  # (user_id, author_id, affinity) of `day`
    unchosen: list[np.ndarray]  # per user, the catalogue rows of `truth` clicked on an exposure no model chose
    served_clicks: int  # clicks of the evaluation days on exposures the recommendation path chose



def load_eval_data(cfg: PlatformConfig, day: dt.date, eval_days: int = 1) -> EvalData:
    """Training window and truth for an evaluation of `day` (read-only)."""
    window = cfg.retrieval.train_window_days
    first, last = day - dt.timedelta(days=window - 1), day + dt.timedelta(days=eval_days)
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        train = load_events(con, catalogue, cfg.retrieval.positive_event, first, day)
        future = load_events(con, catalogue, "click", day + dt.timedelta(days=1), last)
        served = model_chosen(con, cfg, "click", day + dt.timedelta(days=1), last)
        memberships = _segments(con, day + dt.timedelta(days=1), last)
        follows, implicit = load_follows(con, day), load_implicit_follows(con, day)
    if not len(future):
        raise ValueError(f"evaluation of {day}: no clicks on the {eval_days} day(s) after it (data through {day}?)")
    order = np.lexsort((future.item, future.user_id))  # by user, then item: each user's distinct items in one pass
    user_of, item_of = future.user_id[order], future.item[order]
    users, starts = np.unique(user_of, return_index=True)
    first_days = np.minimum.reduceat(future.day[order], starts)
    distinct = np.r_[True, (user_of[1:] != user_of[:-1]) | (item_of[1:] != item_of[:-1])]
    truth = np.split(item_of[distinct], np.searchsorted(np.flatnonzero(distinct), starts[1:]))
    sample = np.flatnonzero(evaluation_sample(users, cfg.evaluation.max_users))
    users, truth, first_days = users[sample], [truth[i] for i in sample], first_days[sample]
    unchosen = _unchosen(users, truth, served, catalogue) if len(served) else truth
    segments = scored_day_segments(users, first_days, memberships)
    tail = m.tail_items(train.item, len(catalogue), cfg.evaluation.tail_share)
    log.info("evaluation %s: %d catalogue items, %d training positives (%s..%s), %d users (of %d) with %d next-day "
             "clicks (%d on exposures the recommendation path chose)", day, len(catalogue), len(train), first, day,
             len(users), len(starts), len(future), len(served))
    return EvalData(day, eval_days, window, catalogue, train, users, truth, segments, tail, follows, implicit,
                    unchosen, len(served))


def evaluation_sample(users: np.ndarray, max_users: int) -> np.ndarray:
    """Which `users` are evaluated (bool): all of them, or the `max_users` with the smallest stable
    hash of their id (tasks.core.hashing): the same sample on every run, and largely the same users
    from one night to the next."""
    if len(users) <= max_users:
        return np.ones(len(users), dtype=bool)
    keep = np.zeros(len(users), dtype=bool)
    keep[np.argpartition(splitmix64(users, SAMPLE_SALT), max_users - 1)[:max_users]] = True
    return keep


def _unchosen(users: np.ndarray, truth: list[np.ndarray], served: pd.DataFrame, catalogue: Catalogue) -> list[np.ndarray]:
    """Each user's truth without the items of `served` (user_id, item_id) clicks."""
    lengths = np.array([len(t) for t in truth])
    rows = np.concatenate(truth)
    keys = np.repeat(users, lengths).astype(np.int64) * len(catalogue) + rows
    known = np.isin(served.item_id.to_numpy(np.int64), catalogue.item_id)
    chosen = served.user_id.to_numpy(np.int64)[known] * len(catalogue) + catalogue.index(
        served.item_id.to_numpy(np.int64)[known])
    keep = ~np.isin(keys, chosen)
    return [r[k] for r, k in zip(np.split(rows, np.cumsum(lengths)[:-1]), np.split(keep, np.cumsum(lengths)[:-1]))]


def _segments(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date) -> pd.DataFrame:
    tables = table_names(con)
    if "int_user_day_segments" not in tables:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "day": pd.Series(dtype="datetime64[s]"),
                             "segment": pd.Series(dtype="str")})
    return con.execute("select user_id, day, segment from int_user_day_segments where day between ? and ?",
                       [first, last]).df()


def scored_day_segments(users: np.ndarray, scored_day: np.ndarray, memberships: pd.DataFrame) -> pd.DataFrame:
    """(user_id, segment) of each user's memberships (user_id, day, segment) on the user's scored
    day (the first evaluation day with a click)."""
    scored = pd.DataFrame({"user_id": users, "day": scored_day.astype("datetime64[D]")})
    on_day = memberships.assign(day=memberships.day.to_numpy().astype("datetime64[D]"))
    return scored.merge(on_day, on=["user_id", "day"])[["user_id", "segment"]]


def score_channel(data: EvalData, channel: Retriever, ev: EvaluationConfig, name: str | None = None,
                  version: str = "") -> pd.DataFrame:
    """Every metric of one fitted channel (reported as `name`, default its own; `version`: the
    registry version scored, '' for a fit on the spot), overall and per segment."""
    label = name or channel.name
    started = time.perf_counter()
    out = score_retrieved(data, channel.retrieve(data.users, max(ev.k)), ev, label, version)
    log.info("evaluated %s%s on %d users in %.1f s", label, f" {version}" if version else "", len(data.users), time.perf_counter() - started)
    return out


def user_groups(data: EvalData) -> dict[str, np.ndarray]:
    """Rows of data.users per group: all, with / without a positive in the window, each segment
    (empty groups but 'all' left out)."""
    warm = np.isin(data.users, data.train.user_id)
    groups = {ALL: np.arange(len(data.users)), WARM: np.flatnonzero(warm), COLD: np.flatnonzero(~warm)}
    for segment, ids in data.segments.groupby("segment").user_id:
        groups[str(segment)] = np.flatnonzero(np.isin(data.users, ids.to_numpy()))
    return {name: rows for name, rows in groups.items() if len(rows) or name == ALL}


def intervals(per_user: np.ndarray, ev: EvaluationConfig) -> list[tuple[float, float, float, int]]:
    """(mean, ci_low, ci_high, n_users) of each column of `per_user` ((n,) or (n, m)) over the
    users with finite values in every column: the percentile bootstrap CI over those users."""
    values = np.asarray(per_user, np.float64).reshape(len(per_user), -1)
    values = values[np.isfinite(values).all(axis=1)]
    if not len(values):
        return [(float("nan"), float("nan"), float("nan"), 0)] * values.shape[1]
    low, high = m.bootstrap_ci(values, ev.gate_bootstrap, ev.ci_alpha, ev.gate_seed)
    return [(float(v), float(lo), float(hi), len(values)) for v, lo, hi in zip(values.mean(axis=0), low, high)]


def score_retrieved(data: EvalData, retrieved: np.ndarray, ev: EvaluationConfig, label: str,
                    version: str = "") -> pd.DataFrame:
    """`score_channel` of lists already retrieved for every user of `data` (catalogue rows, best
    first; the top K are the first K), one row per (segment, k, metric) with its CI over users."""
    ks = tuple(ev.k)
    records = []
    for segment, rows in user_groups(data).items():
        got, truth = retrieved[rows], [data.truth[i] for i in rows]
        means = iter(intervals(m.user_terms(got, truth, ks), ev))
        tails = iter(intervals(np.column_stack([m.user_tail_recall(got, truth, k, data.tail) for k in ks]), ev))
        for k in ks:
            values = {"recall": next(means), "ndcg": next(means), "hit_rate": next(means),
                      "coverage": (m.coverage_at_k(got, k, len(data.catalogue)), float("nan"), float("nan"), len(rows)),
                      "tail_recall": next(tails)}
            records += [{"segment": segment, "k": k, "metric": name, "value": value, "ci_low": low, "ci_high": high,
                         "n_users": n} for name, (value, low, high, n) in values.items()]
    out = pd.DataFrame.from_records(records)
    run = {"day": data.day, "eval_days": data.eval_days, "train_window_days": data.train_window_days,
           "channel": label, "version": version}
    return out.assign(**run, below_min_users=out.n_users < ev.min_users)[list(RESULT_COLUMNS)]


def few_users_warning(results: pd.DataFrame, min_users: int) -> str | None:
    """The warning for evaluation rows (retrieval_eval or funnel_eval) whose user groups have fewer
    scored users than `min_users`, or None when every group has enough (a row averaging over a
    subset of its group, e.g. tail_recall, is flagged in below_min_users all the same)."""
    size = results.groupby("segment").n_users.max()
    small = size[size < min_users].sort_values()
    if small.empty:
        return None
    return (f"fewer users scored than evaluation.min_users = {min_users} in {len(small)} group(s): "
            + ", ".join(f"{g} ({n})" for g, n in small.items())
            + "; their confidence intervals are wide, read the numbers with care")


def unchosen_recall(data: EvalData, retrieved: np.ndarray, ev: EvaluationConfig, label: str,
                    version: str = "") -> pd.DataFrame:
    """The `UNCHOSEN` row of lists retrieved for every user of `data`: Recall@K (K = ev.k[0]) on the
    clicks no model chose, with its CI, over the users who have such a click."""
    rows = np.flatnonzero([len(t) for t in data.unchosen])
    k = ev.k[0]
    if len(rows):
        value, low, high, n = intervals(m.user_recall(retrieved[rows], [data.unchosen[r] for r in rows], k), ev)[0]
    else:
        value, low, high, n = float("nan"), float("nan"), float("nan"), 0
    return pd.DataFrame([{"day": data.day, "eval_days": data.eval_days, "train_window_days": data.train_window_days,
                          "channel": label, "version": version, "segment": ALL, "k": k, "metric": UNCHOSEN,
                          "value": value, "ci_low": low, "ci_high": high, "n_users": n,
                          "below_min_users": n < ev.min_users}])[list(RESULT_COLUMNS)]


def user_recall_rows(data: EvalData, retrieved: np.ndarray, k: int, channel: str, version: str) -> pd.DataFrame:
    """`eval_metrics.user_recall` as rows of `retrieval_eval_users`."""
    return pd.DataFrame({"day": data.day, "channel": channel, "version": version, "k": k, "user_id": data.users,
                         "recall": m.user_recall(retrieved, data.truth, k)})


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
        frames.append(score_channel(data, channel, cfg.evaluation, name))
    out = pd.concat(frames, ignore_index=True)
    if warning := few_users_warning(out, cfg.evaluation.min_users):
        log.warning("evaluation of %s: %s", day, warning)
    return out


def write_results(cfg: PlatformConfig, results: pd.DataFrame) -> None:
    """Store results in `retrieval_eval`: the rows of each run (RUN_KEY, channel, version) replace
    those of the same run; other runs, earlier ones included, are kept (the history)."""
    replace_rows(cfg, "retrieval_eval", results[list(RESULT_COLUMNS)], [*RUN_KEY, "channel", "version"],
                 columns="day date, eval_days integer, train_window_days integer, channel varchar, version varchar, "
                         "segment varchar, k integer, metric varchar, value double, ci_low double, ci_high double, "
                         "n_users bigint, below_min_users boolean, evaluated_at timestamp", stamp="evaluated_at")


def write_user_recall(cfg: PlatformConfig, rows: pd.DataFrame) -> None:
    """Store per-user recall rows in `retrieval_eval_users`, replacing those of the same days, channels and versions."""
    replace_rows(cfg, "retrieval_eval_users", rows, ["day", "channel", "version"],
                 columns="day date, channel varchar, version varchar, k integer, user_id bigint, recall double, "
                         "evaluated_at timestamp", stamp="evaluated_at")
