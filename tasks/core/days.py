"""Which days a run of daily_metrics (or of a DAG that follows it) rebuilds, and running a DAG over
a range of days (backfill)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any


def resolve_days(
    params: Mapping[str, Any] | None,
    triggering_asset_events: Mapping[Any, Iterable[Any]] | None,
    logical_date: dt.datetime | None,
) -> dict[str, str]:
    """The days a run rebuilds, {"ds_from": first, "ds": last}: the `day` (and `through`) params
    when given; else the days announced by the triggering asset events (recpipe_raw_events: a
    day; recpipe_metrics: a range; several runs upstream may be coalesced into one triggered
    run); else the logical date."""
    params = params or {}
    if params.get("day"):
        first = dt.date.fromisoformat(str(params["day"]))
        last = dt.date.fromisoformat(str(params.get("through") or first))
        return {"ds_from": first.isoformat(), "ds": day_range(first, last)[-1].isoformat()}
    if params.get("through"):
        raise ValueError("param `through` needs param `day` (the first day)")
    announced = sorted(
        dt.date.fromisoformat(str(day))
        for events in (triggering_asset_events or {}).values()
        for event in events
        for key in ("day", "ds_from", "ds")  # ingest announces a day, daily_metrics a range
        if (day := (getattr(event, "extra", None) or {}).get(key))
    )
    if announced:
        return {"ds_from": announced[0].isoformat(), "ds": announced[-1].isoformat()}
    if logical_date is not None:
        day = logical_date.date().isoformat()
        return {"ds_from": day, "ds": day}
    raise ValueError("no day given (param `day`), announced by an asset event, or logical date")


def day_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from start to end, both included."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
