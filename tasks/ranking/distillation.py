"""The distillation set (docs/METHODS.md "Distillation set and gate"): each night the current full ranker scores the day's
exposures; the predictions are stored as a dated table, `distillation_predictions` (day, version,
user_id, item_id, p_<head> and y_<head> per ranking head, fault), and gated by GX
(tasks/ranking/gate.py) before the pre-ranker may distil them.

`ranking.full.fault_injection` plants a bug in the scoring (models/ranking/faults.py) for drills; the
rows record it. A failed gate keeps the predictions for inspection; `teacher` then answers None
(the pre-ranker trains on labels only) or, with `ranking.gate.on_failure: skip`, raises Skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pandas as pd

from models.common.tables import Exposures
from models.ranking import faults
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig
from tasks.core.warehouse import model_chosen, replace_rows, table_names
from tasks.ranking.data import load_exposures, user_segments
from tasks.ranking.full import predict
from tasks.ranking.gate import check, key_in
from tasks.retrieval.data import connect_read

log = logging.getLogger(__name__)
TABLE = "distillation_predictions"
FULL_RANKING = "full_ranking"


class Skipped(RuntimeError):
    """No teacher for the day and the config says to skip pre-ranking training."""


def frame(day: dt.date, version: str, exposures: Exposures, predictions: np.ndarray, fault: str) -> pd.DataFrame:
    """The stored rows of one scored day."""
    out = pd.DataFrame({"day": day, "version": version, "user_id": exposures.user_id, "item_id": exposures.item_id})
    for k, head in enumerate(RANKING_HEADS):
        out[f"p_{head}"] = predictions[:, k].astype(np.float64)
    for k, head in enumerate(RANKING_HEADS):
        out[f"y_{head}"] = exposures.labels[:, k].astype(np.int8)
    out["fault"] = fault
    return out


def scorer_for(cfg: PlatformConfig, day: dt.date) -> artifacts.Version:
    """The full ranker that scores `day`: the current version if its training ended before the
    day, else (a re-run after the night's aged training) the newest version that did."""
    store = registry.model_store(cfg, FULL_RANKING)
    version = registry.trained_before(store, day)
    if version is None:
        raise artifacts.ArtifactError(f"{store}: no version trained before {day}")
    return version


def score_day(cfg: PlatformConfig, day: dt.date) -> dict[str, Any]:
    """Score `day`'s exposures with its full ranker (`scorer_for`; its planted fault, if any,
    applied) and store them, replacing the day."""
    version = scorer_for(cfg, day)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day, day)
    if not len(exposures):
        raise ValueError(f"distillation: no exposures on {day} (ranking_exposures built for it?)")
    fault = cfg.ranking.full.fault_injection
    rows = frame(day, version.name, exposures, predict(cfg, version, exposures), fault)
    if fault != "none":
        log.warning("distillation %s: planting fault %s in the full ranker's predictions", day, fault)
        with connect_read(cfg) as con:
            segments = user_segments(con, day, day)[["user_id", "segment"]]
        rows = faults.inject(rows, fault, np.random.default_rng(day.toordinal()), segments)
    replace_rows(cfg, TABLE, rows, ["day"])
    log.info("distillation %s: %d exposures scored by full_ranking %s", day, len(rows), version.name)
    return {"day": str(day), "version": version.name, "rows": len(rows), "fault": fault}


def load_scored(cfg: PlatformConfig, day: dt.date) -> pd.DataFrame | None:
    """A stored day (None when not scored)."""
    with connect_read(cfg) as con:
        if not _exists(con, TABLE):
            return None
        rows = con.execute(f"select * from {TABLE} where day = ? order by user_id, item_id", [day]).df()
    return rows if len(rows) else None


def _exists(con: Any, table: str) -> bool:
    return table in table_names(con)


# a gate row counts for the predictions stored for its day (drills gate other versions of a day)
_ACCEPTED = f"""
    select g.day from distillation_gate as g
    inner join (select distinct day, version from {TABLE}) as p using (day, version)
    where g.passed
"""


def last_accepted_day(cfg: PlatformConfig, before: dt.date) -> dt.date | None:
    """The latest day before `before` whose stored predictions passed the gate."""
    with connect_read(cfg) as con:
        if not (_exists(con, "distillation_gate") and _exists(con, TABLE)):
            return None
        row = con.execute(f"select max(day) from ({_ACCEPTED}) where day < ?", [before]).fetchone()
    return row[0] if row and row[0] else None


def gate_day(cfg: PlatformConfig, day: dt.date) -> Any:
    """Run the GX gate on the stored predictions of `day` against the last accepted day, each
    exposure flagged `chosen` when a model picked it (the closed loop's feeds). An accepted day
    that was the first served one (a model chose its exposures, none the day before) is no
    reference: its ranker, trained on organic exposures only, over-predicted its own picks, and
    the next ranker, the first trained on them, recalibrates (KL 2.8 against it in the demo)."""
    scored = load_scored(cfg, day)
    if scored is None:
        raise ValueError(f"distillation gate: {day} has not been scored")
    previous_day = last_accepted_day(cfg, day)
    previous = load_scored(cfg, previous_day) if previous_day else None
    with connect_read(cfg) as con:
        exposures = con.execute("select user_id, item_id from ranking_exposures where day = ?", [day]).df()
        exposures = _flag_chosen(con, cfg, exposures, day)
        if previous is not None:
            previous = _flag_chosen(con, cfg, previous, previous_day)
            before = previous_day - dt.timedelta(days=1)
            if previous.chosen.any() and not len(model_chosen(con, cfg, "impression", before, before)):
                log.warning("distillation gate %s: %s was the first served day, no reference to compare with",
                            day, previous_day)
                previous = None
        segments = user_segments(con, day, day)[["user_id", "segment"]]
    return check(cfg, day, str(scored.version.iloc[0]), scored, exposures, segments, previous)


def _flag_chosen(con: Any, cfg: PlatformConfig, frame: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """`frame` with `chosen`: its (user_id, item_id) was shown on `day` by a model's choice."""
    return frame.assign(chosen=key_in(frame, model_chosen(con, cfg, "impression", day, day)))


def gate_passed(cfg: PlatformConfig, day: dt.date) -> bool:
    """Whether `day`'s stored predictions passed their gate."""
    with connect_read(cfg) as con:
        if not (_exists(con, "distillation_gate") and _exists(con, TABLE)):
            return False
        return bool(con.execute(f"select count(*) from ({_ACCEPTED}) where day = ?", [day]).fetchone()[0])


def teacher(cfg: PlatformConfig, day: dt.date) -> str | None:
    """The pre-ranker's teacher for `day` (tasks.ranking.data.Teacher): the table of the full
    ranker's gated predictions; None (label-only training) when the gate failed, or Skipped when
    the config says to skip."""
    if not gate_passed(cfg, day):
        if cfg.ranking.gate.on_failure == "skip":
            raise Skipped(f"{day}: the full ranker's predictions failed their gate; pre-ranking skips the day")
        log.warning("%s: the full ranker's predictions failed their gate: pre-ranking trains on labels only", day)
        return None
    return TABLE
