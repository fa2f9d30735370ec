"""The GX suites of the distillation gate (PLAYBOOK §3, §7): the full ranker's predictions of a day
before they become pre-ranking distillation targets. tasks/distillation_gate.py builds the frames
and runs the suites through a file-based context and checkpoint (data docs kept per run).

The frames (one suite each):

- rows: the scored exposures, one row per (user, item) shown: user_id, item_id, and for every head
  of tasks.config.RANKING_HEADS p_<head> (the prediction) and y_<head> (the 0/1 label).
- coverage: one row: exposures (the day's exposures), scored (rows scored), coverage = scored /
  exposures.
- calibration: one row per judged slice (head x segment, segment 'all' = every row; slices with
  fewer positives than calibration_min_positives are not judged): slice ("<head> / <segment>"),
  head, segment, n, positives, mean_prediction, observed_rate, ratio = mean_prediction /
  observed_rate.
- ranking: one row per judged head (at least auc_min_positives positives): slice (the head), head,
  n, positives, auc (ROC AUC of p against y on the rows with a prediction).
- drift: the rows frame again, against a partition of the previous accepted day's predictions per
  head (only when a previous day exists).

Per-slice checks carry a row condition (slice == "..."), so a failure names its slice, in the
data docs too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
from great_expectations.expectations.row_conditions import Column

DRIFT_BINS = 20  # quantile bins of the previous day's predictions
TAIL_WEIGHT = 1e-6  # each tail (below 0, above 1): out-of-range values give a large, finite KL
SMOOTHING = 0.5  # pseudo-count per bin, so a bin empty yesterday does not make KL infinite


def pred(head: str) -> str:
    return f"p_{head}"


def label(head: str) -> str:
    return f"y_{head}"


def slice_name(head: str, segment: str | None = None) -> str:
    return head if segment is None else f"{head} / {segment}"


def rows_expectations(heads: Sequence[str]) -> list[Any]:
    """Ids present; per head every prediction present (NaN counts as null) and in [0, 1], every
    label present and 0 or 1."""
    suite: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=["user_id", "item_id", *(c for h in heads for c in (pred(h), label(h)))], exact_match=False
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
    ]
    for head in heads:
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column=pred(head)),
            gxe.ExpectColumnValuesToBeBetween(column=pred(head), min_value=0, max_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column=label(head)),
            gxe.ExpectColumnValuesToBeInSet(column=label(head), value_set=[0, 1]),
        ]
    return suite


def coverage_expectations(min_coverage: float) -> list[Any]:
    """One row; scored rows / exposures in [min_coverage, 1] (more rows than exposures is a bug too)."""
    return [
        gxe.ExpectTableRowCountToEqual(value=1),
        gxe.ExpectColumnValuesToBeBetween(column="exposures", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="coverage", min_value=min_coverage, max_value=1),
    ]


def calibration_expectations(slices: Iterable[str], band: tuple[float, float]) -> list[Any]:
    """Per judged slice: mean prediction / observed rate within the band (a NaN ratio, e.g. a slice
    without a single prediction, fails the not-null check)."""
    low, high = band
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="ratio"),
        *(
            gxe.ExpectColumnValuesToBeBetween(
                column="ratio", min_value=low, max_value=high, row_condition=Column("slice") == s
            )
            for s in slices
        ),
    ]


def ranking_expectations(heads: Iterable[str], band: tuple[float, float]) -> list[Any]:
    """Per judged head: AUC against the labels within the band; below: the predictions do not rank
    (shuffled, constant, inverted), above: the labels leaked into the predictions."""
    low, high = band
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="auc"),
        *(
            gxe.ExpectColumnValuesToBeBetween(column="auc", min_value=low, max_value=high, row_condition=Column("slice") == h)
            for h in heads
        ),
    ]


def drift_partition(previous: np.ndarray, bins: int = DRIFT_BINS) -> dict[str, list[float]] | None:
    """A continuous GX partition object of yesterday's predictions on [0, 1]: quantile bins (so a
    head predicted near 0.01 gets as fine a grid as one near 0.3), smoothed weights and tiny tails.
    None without usable values."""
    values = np.asarray(previous, dtype=np.float64)
    values = values[np.isfinite(values) & (values >= 0) & (values <= 1)]
    if len(values) == 0:
        return None
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = 0.0, 1.0  # cover the whole valid range
    edges = np.unique(edges)
    if len(edges) < 3:  # (almost) constant yesterday: a uniform grid
        edges = np.linspace(0, 1, bins + 1)
    counts, _ = np.histogram(values, edges)
    weights = (counts + SMOOTHING) / (counts.sum() + SMOOTHING * len(counts)) * (1 - 2 * TAIL_WEIGHT)
    return {
        "bins": [float(e) for e in edges],
        "weights": [float(w) for w in weights],
        "tail_weights": [TAIL_WEIGHT, TAIL_WEIGHT],
    }


def drift_expectations(partitions: Mapping[str, Mapping[str, list[float]]], max_kl: float) -> list[Any]:
    """Per head with a partition: KL(today's p || yesterday's) at most max_kl."""
    return [
        gxe.ExpectColumnKLDivergenceToBeLessThan(
            column=pred(head), partition_object=dict(partition), threshold=max_kl
        )
        for head, partition in partitions.items()
    ]
