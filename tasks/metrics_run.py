"""Which day a daily_metrics run rebuilds, and running that DAG over a range of days (backfill)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any


def resolve_days(
    params: Mapping[str, Any] | None,
    triggering_asset_events: Mapping[Any, Iterable[Any]] | None,
    logical_date: dt.datetime | None,
) -> dict[str, str]:
    """The days a daily_metrics run rebuilds, {"ds_from": first, "ds": last}: the `day` (and
    `through`) params when given; else the days announced by the triggering recpipe_raw_events
    events (several ingest runs may be coalesced into one triggered run); else the logical date."""
    params = params or {}
    if params.get("day"):
        first = dt.date.fromisoformat(str(params["day"]))
        last = dt.date.fromisoformat(str(params.get("through") or first))
        return {"ds_from": first.isoformat(), "ds": day_range(first, last)[-1].isoformat()}
    if params.get("through"):
        raise ValueError("daily_metrics: param `through` needs param `day` (the first day)")
    announced = sorted(
        dt.date.fromisoformat(str(event.extra["day"]))
        for events in (triggering_asset_events or {}).values()
        for event in events
        if (getattr(event, "extra", None) or {}).get("day")
    )
    if announced:
        return {"ds_from": announced[0].isoformat(), "ds": announced[-1].isoformat()}
    if logical_date is not None:
        day = logical_date.date().isoformat()
        return {"ds_from": day, "ds": day}
    raise ValueError("daily_metrics: no day given (param `day`), announced by an asset event, or logical date")


def day_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from start to end, both included."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
