"""The planted-bug drill (docs/METHODS.md "Fault drill"): does the distillation gate stop a buggy full ranker, and
what would the bug have done to pre-ranking?

For day d (its predictions by the full ranker trained before d, the previous accepted day as the
drift reference) and each fault of tasks.core.config.FAULTS (models/ranking/faults.py): the gate's verdict on
the faulty predictions (the expectations that failed; checked as version "drill:<fault>:<scorer>",
so the night's own gate rows are never confused with a drill's, but alerted like any failure),
and the pre-ranker's AUC per target on day d + 1 after the night of d (warm-started, as the night
does, from the pre-ranker trained before d when there is one; cold on d otherwise)
- gated: distilled from the predictions if the gate passed them, else on labels only;
- ungated: distilled from the faulty predictions whatever they are, joined to the exposures by
  (user_id, item_id) as the night joins its teacher (the first of duplicated keys; NaN, or an
  exposure without a prediction, read as 0, as a pipeline without the gate would feed them).
Rows go to the warehouse table `fault_drill` (replaced per day) and the pre-rankers to a
throwaway store. `recpipe fault-drill --day D` runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from models.ranking.faults import inject
from tasks.core import artifacts, registry
from tasks.core.config import FAULTS, PlatformConfig
from tasks.core.warehouse import replace_rows
from tasks.ranking.data import TEACHER_COLUMNS, Teacher, load_exposures, user_segments
from tasks.ranking.distillation import frame, last_accepted_day, load_scored, scorer_for
from tasks.ranking.full import predict
from tasks.ranking.gate import check
from tasks.ranking.pre import evaluate, train
from tasks.retrieval.data import connect_read

log = logging.getLogger(__name__)
TABLE = "fault_drill"


def ungated_teacher(scored: pd.DataFrame, day: dt.date, keys: pd.DataFrame) -> pd.DataFrame:
    """The predictions of `scored` per exposure of `keys` (user_id, item_id) of `day` as a teacher
    (tasks.ranking.data.Teacher), joined without checks: the first row of a duplicated key, 0 for
    an exposure without a prediction and for NaN."""
    first = scored.drop_duplicates(["user_id", "item_id"])[["user_id", "item_id", *TEACHER_COLUMNS]]
    aligned = keys.merge(first, on=["user_id", "item_id"], how="left")
    aligned[TEACHER_COLUMNS] = aligned[TEACHER_COLUMNS].fillna(0.0)
    return aligned.assign(day=day)


def drill(cfg: PlatformConfig, day: dt.date, faults: tuple[str, ...] = FAULTS) -> pd.DataFrame:
    """One row per fault: caught, failed expectations, and the pre-ranker's next-day mean AUC
    (and per target) gated vs ungated."""
    scorer = scorer_for(cfg, day)
    with connect_read(cfg) as con:
        today, tomorrow = load_exposures(con, day, day), load_exposures(con, day + dt.timedelta(days=1), day + dt.timedelta(days=1))
        segments = user_segments(con, day, day)[["user_id", "segment"]]
    if not len(tomorrow):
        raise ValueError(f"fault drill: no exposures on {day + dt.timedelta(days=1)} to evaluate the pre-ranker on")
    parent = registry.trained_before(registry.model_store(cfg, "preranking"), day)  # the night's warm start
    previous_day = last_accepted_day(cfg, day)
    previous = load_scored(cfg, previous_day) if previous_day else None
    clean = predict(cfg, scorer, today)
    keys = pd.DataFrame({"user_id": today.user_id, "item_id": today.item_id})
    rows = []
    with tempfile.TemporaryDirectory(prefix="recpipe-drill-") as tmp:

        def auc_after(teacher: Teacher, name: str) -> dict[str, float]:
            store = Path(tmp) / name
            if parent is not None:  # the night as it runs: aged, 1 epoch from yesterday's pre-ranker
                shutil.copytree(parent.path, store / "versions" / parent.name)
                artifacts.switch(store, parent.name)
            version = train(cfg, day, teacher, make_current=True, store=store)
            return evaluate(cfg, version, tomorrow)

        label_only = auc_after(None, "label_only")
        for fault in faults:
            version = f"drill:{fault}:{scorer.name}"
            scored = inject(frame(day, version, today, clean, fault), fault, np.random.default_rng(day.toordinal()),
                            segments)
            outcome = check(cfg, day, version, scored, keys, segments, previous)
            ungated = auc_after(ungated_teacher(scored, day, keys), f"ungated-{fault}")
            gated = ungated if outcome.success else label_only
            rows.append({
                "day": day, "fault": fault, "scorer": scorer.name, "caught": not outcome.success,
                "failed_expectations": "; ".join(sorted({f"{f['suite']}: {f['expectation']}" for f in outcome.failed})),
                "auc_gated": float(np.mean(list(gated.values()))),
                "auc_ungated": float(np.mean(list(ungated.values()))),
                "auc_label_only": float(np.mean(list(label_only.values()))),
                **{f"auc_gated_{t}": v for t, v in gated.items()},
                **{f"auc_ungated_{t}": v for t, v in ungated.items()},
            })
            log.info("fault drill %s %s: %s; pre-ranking AUC gated %.4f, ungated %.4f", day, fault,
                     "caught" if not outcome.success else "passed", rows[-1]["auc_gated"], rows[-1]["auc_ungated"])
    out = pd.DataFrame(rows)
    replace_rows(cfg, TABLE, out, ["day"])
    return out



