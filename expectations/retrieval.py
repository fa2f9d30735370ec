"""The GX suite of the nightly model gate (docs/METHODS.md "Nightly retrieval gate and publish"): a candidate version's evaluation row
before it may become current.

The frame has one row per gated candidate: model, candidate_recall (Recall@K of the candidate on
the evaluation day), recall_floor (the lowest recall the paired bootstrap of the users lets pass:
the current version's Recall@K x (1 - max_recall_drop - (drop - drop_ci_low)); 0 before the first
version), n_users (the paired users), and the comparison with the popularity baseline on the same
clicks: candidate_baseline_recall and popularity_recall (both null when a closed-loop night has
too few clicks that no model chose: the comparison is skipped, tasks/retrieval/nightly.py).
"""

from __future__ import annotations

from typing import Any

import great_expectations.expectations as gxe

GATE_COLUMNS = ("model", "candidate_recall", "recall_floor", "n_users")


def model_gate_expectations() -> list[Any]:
    """Recall a probability, evaluated on at least one user, not below the floor the current
    version sets, and above the popularity baseline."""
    return [
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in GATE_COLUMNS),
        gxe.ExpectColumnValuesToBeBetween(column="candidate_recall", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="n_users", min_value=1),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="candidate_recall", column_B="recall_floor", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="candidate_baseline_recall", column_B="popularity_recall",
                                                    ignore_row_if="either_value_is_missing"),
    ]
