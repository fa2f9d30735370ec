"""Which days a DAG run rebuilds (tasks/core/days.py): its params, then the triggering Asset events,
then its logical date."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks.core.days import resolve_days


class _Event:
    def __init__(self, day: str) -> None:
        self.extra = {"day": day}


def test_run_days_come_from_params_then_asset_events_then_logical_date() -> None:
    events = {"recpipe_raw_events": [_Event("2026-01-05"), _Event("2026-01-02")]}
    logical = dt.datetime(2026, 1, 9, tzinfo=dt.UTC)
    assert resolve_days({"day": "2026-01-03"}, events, logical) == {"ds_from": "2026-01-03", "ds": "2026-01-03"}
    assert resolve_days({"day": "2026-01-03", "through": "2026-01-06"}, events, logical)["ds"] == "2026-01-06"
    # Coalesced ingest runs: one triggered run rebuilds every announced day.
    assert resolve_days({"day": None}, events, logical) == {"ds_from": "2026-01-02", "ds": "2026-01-05"}
    assert resolve_days({}, {}, logical) == {"ds_from": "2026-01-09", "ds": "2026-01-09"}
    with pytest.raises(ValueError, match="no day"):
        resolve_days({}, {}, None)
    with pytest.raises(ValueError, match="before start"):
        resolve_days({"day": "2026-01-06", "through": "2026-01-03"}, {}, None)
