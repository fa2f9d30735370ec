"""Planted bugs of the full ranker (docs/METHODS.md "Fault drill"): what a broken ranker's predictions look like,
for the distillation gate's tests and drills (`ranking.full.fault_injection`; "none" in production).

`inject(scored, kind, rng, segments)` takes a day's scored frame (user_id, item_id, and per head of
RANKING_HEADS the prediction p_<head> and the 0/1 label y_<head>; other columns ride along) and
returns a new frame (the input is not modified; predictions keep their dtype):

| kind | what the bug does |
| --- | --- |
| none | nothing (a copy) |
| scaled_x3 | p * 3, clipped to 1 (a wrong temperature / a missing normalisation) |
| constant_half | every p = 0.5 (a dead model, a default value served) |
| shuffled | predictions permuted over the rows (joined to the wrong exposures) |
| nan_5pct | 5% of the values NaN (numerical blow-up, a failed feature lookup) |
| leaked_labels | p = 0.98 * y + 0.01 (the label leaked into the features) |
| shifted_0_2 | p + 0.2, clipped to [0, 1] (a wrong bias) |
| duplicated_5pct | 5% of the rows replaced by copies of others: as many rows, but some exposures twice and as many without a prediction (a join fan-out cut back to the expected count) |
| wrong_user_10pct | 10% of the rows carry the user of another of those rows (an off-by-one user lookup) |
| wrong_item_10pct | 10% of the rows carry the item of another of those rows |
| segment_x3 | the predictions of the users of the day's largest segment (`segments`: user_id, segment) * 3, clipped to 1 (a broken per-segment calibration; the overall calibration moves by about the segment's share) |
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.core.config import FAULTS, RANKING_HEADS

PREDICTIONS = [f"p_{h}" for h in RANKING_HEADS]
LABELS = [f"y_{h}" for h in RANKING_HEADS]


def _with_predictions(scored: pd.DataFrame, values: np.ndarray, rows: np.ndarray | slice = slice(None)) -> pd.DataFrame:
    """A copy of `scored` whose predictions at `rows` (positions) are `values`, dtypes kept."""
    out = scored.copy()
    for k, column in enumerate(PREDICTIONS):
        p = out[column].to_numpy(copy=True)
        p[rows] = values[:, k]
        out[column] = p
    return out


def _rolled(scored: pd.DataFrame, column: str, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """A copy whose `column` on a random `share` of the rows is taken from the next of those rows."""
    rows = np.sort(rng.choice(len(scored), size=round(share * len(scored)), replace=False))
    out = scored.copy()
    values = out[column].to_numpy(copy=True)
    values[rows] = np.roll(values[rows], -1)
    out[column] = values
    return out


def inject(scored: pd.DataFrame, kind: str, rng: np.random.Generator,
           segments: pd.DataFrame | None = None) -> pd.DataFrame:
    """The scored frame with fault `kind` (one of tasks.core.config.FAULTS) planted; a new frame,
    index reset. `segments` (user_id, segment): the users' segments, needed by segment_x3 only."""
    scored = scored.reset_index(drop=True)
    p = scored[PREDICTIONS].to_numpy(dtype=np.float64, copy=True)
    if kind == "none":
        return scored
    if kind == "scaled_x3":
        return _with_predictions(scored, np.minimum(p * 3, 1))
    if kind == "constant_half":
        return _with_predictions(scored, np.full_like(p, 0.5))
    if kind == "shuffled":
        return _with_predictions(scored, p[rng.permutation(len(p))])
    if kind == "nan_5pct":
        p[np.unravel_index(rng.choice(p.size, size=round(0.05 * p.size), replace=False), p.shape)] = np.nan
        return _with_predictions(scored, p)
    if kind == "leaked_labels":
        return _with_predictions(scored, 0.98 * scored[LABELS].to_numpy(dtype=np.float64) + 0.01)
    if kind == "shifted_0_2":
        return _with_predictions(scored, np.clip(p + 0.2, 0, 1))
    if kind == "duplicated_5pct":
        order = rng.permutation(len(scored))
        k = round(0.05 * len(scored))
        rows = np.arange(len(scored))
        rows[order[:k]] = order[k:2 * k]  # k rows overwritten by copies of k others
        return scored.iloc[rows].reset_index(drop=True)
    if kind == "wrong_user_10pct":
        return _rolled(scored, "user_id", 0.1, rng)
    if kind == "wrong_item_10pct":
        return _rolled(scored, "item_id", 0.1, rng)
    if kind == "segment_x3":
        if segments is None or not len(segments):
            raise ValueError("fault segment_x3 needs the users' segments")
        members = scored[["user_id"]].merge(segments[["user_id", "segment"]].drop_duplicates(), on="user_id")
        if not len(members):
            raise ValueError("fault segment_x3: no scored user is in a segment")
        largest = members["segment"].value_counts().sort_index().idxmax()  # ties: the first name
        rows = np.flatnonzero(scored["user_id"].isin(members.loc[members["segment"] == largest, "user_id"]))
        return _with_predictions(scored, np.minimum(p[rows] * 3, 1), rows)
    raise ValueError(f"unknown fault {kind!r}; faults: {', '.join(FAULTS)}")
