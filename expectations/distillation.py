"""The GX suites of the distillation gate (docs/METHODS.md "Distillation set and gate"): the full ranker's predictions of a day
before they become pre-ranking distillation targets. tasks/ranking/gate.py derives the frames
and runs the two suites through a file-based context and checkpoint (data docs kept per run).

The frames (one suite each):

- rows: the scored exposures, one row per (user, item) shown: user_id, item_id, `exposed` (the
  key is one of the day's exposures), `chosen` (a model chose the exposure), `reference` (the row
  counts in the calibration slices: on a closed-loop day the exposures no model chose, when they
  are enough, see tasks/ranking/gate.py `calibration_rows`; else every row), and for every head
  of tasks.core.config.RANKING_HEADS p_<head> (the prediction) and y_<head> (the 0/1 label). Suite: columns present; key integrity
  against the day's exposures (every (user_id, item_id) unique and exposed; with the row count
  equal to the exposures: exactly one prediction per exposure); ids, predictions (NaN = null) and
  labels present; p in [0, 1]; y in {0, 1}; coverage as the row count (at least min_coverage x
  the day's exposures, at most all of them); and, when a previous accepted day exists, drift per
  head: KL(today's p || a partition of the previous day's p) at most max_kl_divergence.
- slices: one row per slice. check = "calibration", per head and segment ('all' = every
  reference row): n, positives, mean_prediction, observed_rate, ratio = mean_prediction / observed_rate, and
  [ratio_low, ratio_high], the confidence interval of the ratio given the slice's positives
  (exact Poisson interval of the count; a small slice gets a wide one). check = "auc", per head
  with at least auc_min_positives positives: auc (ROC AUC of p against y), auc_se (DeLong) and,
  against the previous accepted day, auc_previous and auc_floor = auc_previous - max_auc_drop -
  z * sqrt(auc_se² + previous auc_se²). Suite: per head, every slice's interval reaches into
  calibration_band (ratio_low <= band high, ratio_high >= band low: the slice is flagged only
  when its sample shows it outside the band); the AUCs within auc_band and, with a previous day,
  at least auc_floor; interval bounds and AUCs not null. On the day serving switches from organic
  exposures to a model's (tasks/ranking/gate.py `regime_switch`) the checks against the organic
  regime (drift, AUC floor, and calibration unless enough exposures were not chosen) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
from great_expectations.expectations.row_conditions import Column

CALIBRATION, AUC = "calibration", "auc"  # the `check` of a slices row
KEY = ("user_id", "item_id")  # an exposure of the day
CHOSEN = "chosen"  # rows frame: a model chose the exposure (the closed loop's feeds)
REFERENCE = "reference"  # rows frame: the row counts in the calibration slices
DRIFT_BINS = 20  # quantile bins of the previous day's predictions
TAIL_WEIGHT = 1e-6  # each tail (below 0, above 1): out-of-range values give a large, finite KL
SMOOTHING = 0.5  # pseudo-count per bin, so a bin empty yesterday does not make KL infinite


def pred(head: str) -> str:
    return f"p_{head}"


def label(head: str) -> str:
    return f"y_{head}"


def slice_name(head: str, segment: str | None = None) -> str:
    return head if segment is None else f"{head} / {segment}"


def rows_expectations(heads: Sequence[str], exposures: int, min_coverage: float) -> list[Any]:
    """Columns and ids present; key integrity: (user_id, item_id) unique, every key one of the
    day's exposures; per head every prediction present (NaN counts as null) and in [0, 1], every
    label present and 0 or 1; coverage: between ceil(min_coverage x exposures) (at least 1) and
    exposures rows (more rows than exposures is a bug too). Unique + exposed + as many rows as
    exposures = exactly one prediction per exposure (duplicated rows, or rows attached to another
    user or item, fail even when the row count is right)."""
    suite: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*KEY, "exposed", *(c for h in heads for c in (pred(h), label(h)))], exact_match=False
        ),
        # a day without exposures fails too: nothing to distil means something upstream broke
        gxe.ExpectTableRowCountToBeBetween(min_value=max(1, math.ceil(min_coverage * exposures - 1e-9)),
                                           max_value=exposures),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(KEY)),
        gxe.ExpectColumnValuesToBeInSet(column="exposed", value_set=[True]),
    ]
    for head in heads:
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column=pred(head)),
            gxe.ExpectColumnValuesToBeBetween(column=pred(head), min_value=0, max_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column=label(head)),
            gxe.ExpectColumnValuesToBeInSet(column=label(head), value_set=[0, 1]),
        ]
    return suite


def slices_expectations(heads: Sequence[str], calibration_band: tuple[float, float] | None,
                        auc_band: tuple[float, float], against_previous: bool) -> list[Any]:
    """Per head: the calibration intervals of its slices reach into the band (a slice fails only
    when even the bound nearest the band is outside it: its ratio is off beyond what its sample
    size allows; None: calibration not judged); every judged head's AUC within the band (below:
    the predictions do not rank - shuffled, constant, inverted; above: the labels leaked into
    them) and, `against_previous`, at least its floor (a drop from the last accepted day beyond
    noise and max_auc_drop). A NaN interval bound or AUC (a slice without a single prediction)
    fails the not-null checks. One expectation per head and bound, not per slice: GX costs ~20 ms
    per expectation and run; the failure report names the slices (tasks/ranking/gate.py)."""
    is_calibration, is_auc = Column("check") == CALIBRATION, Column("check") == AUC
    suite: list[Any] = []
    if calibration_band is not None:
        low, high = calibration_band
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column="ratio_low", row_condition=is_calibration))
        for head in heads:
            of_head = Column("head") == head
            suite += [
                gxe.ExpectColumnValuesToBeBetween(column="ratio_low", max_value=high, row_condition=of_head),
                gxe.ExpectColumnValuesToBeBetween(column="ratio_high", min_value=low, row_condition=of_head),
            ]
    suite += [
        gxe.ExpectColumnValuesToNotBeNull(column="auc", row_condition=is_auc),
        gxe.ExpectColumnValuesToBeBetween(column="auc", min_value=auc_band[0], max_value=auc_band[1],
                                          row_condition=is_auc),
    ]
    if against_previous:  # heads without a judged previous AUC have no floor: not compared
        suite.append(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="auc", column_B="auc_floor", or_equal=True, ignore_row_if="either_value_is_missing",
            row_condition=is_auc,
        ))
    return suite


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
    """Per head with a partition (the rows suite's drift part): KL(today's p || yesterday's) at most max_kl."""
    return [
        gxe.ExpectColumnKLDivergenceToBeLessThan(
            column=pred(head), partition_object=dict(partition), threshold=max_kl
        )
        for head, partition in partitions.items()
    ]
