"""Offline evaluation of the full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)"): a version's predictions on a day's
ranking_exposures, per head and per user segment (everyone as 'all', and each segment of
int_user_day_segments on that day): AUC, mean prediction against the observed rate
(calibration), examples and positives. Rows go to the warehouse table `ranking_eval`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from tasks.core import artifacts
from tasks.core.config import ALL, RANKING_HEADS, PlatformConfig
from tasks.core.eval_metrics import auc
from tasks.core.warehouse import replace_rows
from tasks.ranking.data import load_exposures, user_segments
from tasks.ranking.full import MODEL, predict
from tasks.retrieval.data import connect_read

COLUMNS = ("day", "model", "version", "head", "segment", "n", "positives", "auc", "mean_prediction", "observed_rate")


def evaluate(cfg: PlatformConfig, version: artifacts.Version, day: dt.date) -> pd.DataFrame:
    """One row per (head, segment) of `version` on the exposures of `day` (COLUMNS; NaN AUC for a
    slice without both classes, NaN rates for an empty one)."""
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day, day)
        segments = user_segments(con, day, day)
    if not len(exposures):
        raise ValueError(f"ranking_eval: no ranking_exposures on {day} (build them first)")
    pred = predict(cfg, version, exposures)
    slices = [(ALL, np.ones(len(exposures), bool))] + [
        (name, np.isin(exposures.user_id, group.user_id.to_numpy(np.int64)))
        for name, group in segments.groupby("segment", sort=True)
    ]
    rows = []
    for h, head in enumerate(RANKING_HEADS):
        labels, scores = exposures.labels[:, h], pred[:, h]
        for name, mask in slices:
            n = int(mask.sum())
            rows.append({
                "day": day, "model": MODEL, "version": version.name, "head": head, "segment": name, "n": n,
                "positives": int(labels[mask].sum()),
                "auc": auc(labels[mask], scores[mask]),
                "mean_prediction": float(scores[mask].mean()) if n else float("nan"),
                "observed_rate": float(labels[mask].mean()) if n else float("nan"),
            })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_eval(cfg: PlatformConfig, frame: pd.DataFrame) -> None:
    """Store rows in `ranking_eval`, replacing those of the same (day, model, version)."""
    replace_rows(cfg, "ranking_eval", frame[list(COLUMNS)], ["day", "model", "version"],
                 columns="day date, model varchar, version varchar, head varchar, segment varchar, n bigint, "
                         "positives bigint, auc double, mean_prediction double, observed_rate double, "
                         "evaluated_at timestamp", stamp="evaluated_at")
