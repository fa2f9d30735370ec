"""The report's core charts, read back from the Vega-Lite specs the page embeds: values whose
retention window has not landed yet (LT7 over the last 6 days) are marked apart from the final
line, over a shaded band, so they never read as a drop; long histories get a 7-day rolling mean and
a range selector starting on the last months; one day gets a week's axis, not years; a CTR of
exactly 1.0 raises a caveat."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import ALL
from tasks.reports.fragments import FINAL, WINDOW_DAYS, embedded_specs
from tasks.reports.page import CORE_PANELS, OPEN_WINDOW, render_report
from tests.charts import assert_valid_charts

LT7 = CORE_PANELS[3][3]  # the LT7 panel's title
DAY = 86_400_000  # ms


def _marts(days: int, open_lt7: int, ctr: float = 0.1) -> dict[str, pd.DataFrame]:
    """metrics_daily and retention_daily (segment and bucket all, plus low_activity) over `days`
    days, the last `open_lt7` LT7 windows still open; no A/B readout."""
    day = pd.Series(pd.date_range("2026-01-01", periods=days, freq="D"))
    rng = np.random.default_rng(3)
    frames = []
    for segment, scale in ((ALL, 1.0), ("low_activity", 0.3)):
        frames.append(pd.DataFrame({
            "day": day, "segment": segment, "experiment_bucket": ALL,
            "dau": (rng.integers(80, 120, days) * scale).round(),
            "penetration_rate": rng.uniform(0.05, 0.1, days), "ctr": ctr,
            "lt7": rng.uniform(2, 3, days), "lt30": rng.uniform(5, 8, days),
            "next_day_retention": rng.uniform(0.3, 0.5, days),
            "lt7_complete": np.arange(days) < days - open_lt7, "lt30_complete": np.arange(days) < days - 29,
            "next_day_complete": np.arange(days) < days - 1}))
    both = pd.concat(frames, ignore_index=True)
    metrics = both[["day", "segment", "experiment_bucket", "dau", "penetration_rate", "ctr"]]
    retention = both.drop(columns=["dau", "penetration_rate", "ctr"])
    return {"metrics_daily": metrics, "retention_daily": retention, "ab_readout": pd.DataFrame()}


def _core_chart(marts: dict[str, pd.DataFrame]) -> tuple[dict, str]:
    page = render_report(marts, generated=dt.datetime(2026, 3, 1))
    return assert_valid_charts(page)[0], page


def _points(spec: dict, panel: str) -> pd.DataFrame:
    rows = pd.DataFrame(spec["data"]["values"])
    rows = rows[(rows.panel == panel) & (rows.series == "all users")]
    return rows.assign(day=pd.to_datetime(rows.day.str[:10])).set_index("day")


def _params(spec: dict) -> dict[str, dict]:
    """The chart's selection parameters (altair lifts them to the top, naming their views), by name."""
    return {p["name"]: p for p in spec["params"]}


def test_open_windows_are_marked_apart_from_the_final_line() -> None:
    marts = _marts(days=10, open_lt7=6)
    spec, page = _core_chart(marts)
    lt7 = _points(spec, LT7)
    expected = marts["retention_daily"].query("segment == 'all'").set_index("day")
    assert lt7.value.to_numpy() == pytest.approx(expected.lt7.to_numpy())
    assert list(lt7.status) == [FINAL] * 4 + [OPEN_WINDOW] * 6  # the open ones marked, not dropped

    lt7_panel = spec["vconcat"][0]["concat"][3]["layer"]
    assert lt7_panel[0]["mark"]["type"] == "rect"  # the shaded "not final" band over the open days
    band = lt7_panel[0]["data"]["values"][0]
    assert band["start"] < pd.Timestamp(expected.index[4]).value // 10**6 < band["end"]
    assert band["end"] > pd.Timestamp(expected.index[9]).value // 10**6 and band["what"] == OPEN_WINDOW
    line, points = lt7_panel[-2], lt7_panel[-1]
    assert f"datum.status == '{FINAL}'" in line["transform"][0]["filter"]  # the line holds final values only
    opacity = points["encoding"]["fillOpacity"]["scale"]
    assert dict(zip(opacity["domain"], opacity["range"])) == {FINAL: 1, OPEN_WINDOW: 0}  # hollow, with a legend
    assert "legend" not in points["encoding"]["fillOpacity"] or points["encoding"]["fillOpacity"]["legend"]
    assert "tooltip" in points["encoding"]
    dau_panel = spec["vconcat"][0]["concat"][0]["layer"]
    assert all(layer["mark"]["type"] != "rect" for layer in dau_panel)  # DAU is always final: no band
    assert set(_points(spec, "DAU").status) == {FINAL}

    segments = pd.DataFrame(embedded_specs(page)[1]["data"]["values"])
    low = segments[(segments.panel == "LT7") & (segments.series == "low_activity")]
    assert list(low.status) == [FINAL] * 4 + [OPEN_WINDOW] * 6
    assert page.count("window.vegaEmbed=") == 1 and "<script src=" not in page  # inlined once: offline
    assert "CTR is exactly" not in page  # a CTR of 0.1: no caveat


def test_long_histories_get_a_rolling_mean_and_a_range_selector() -> None:
    marts = _marts(days=400, open_lt7=6)
    spec, _ = _core_chart(marts)
    dau = _points(spec, "DAU")
    overall = marts["metrics_daily"].query("segment == 'all'").set_index("day").dau
    assert dau["rolling"].to_numpy() == pytest.approx(overall.rolling(7, min_periods=1).mean().to_numpy())
    lt7 = _points(spec, LT7)
    assert lt7["rolling"].iloc[-6:].isna().all() and lt7["rolling"].iloc[:-6].notna().all()  # open windows: no mean

    params = _params(spec)
    assert params["range"]["select"] == {"type": "interval", "encodings": ["x"]}
    start, end = params["range"]["value"]["x"]
    assert (end - start) // DAY == pytest.approx(WINDOW_DAYS, abs=10)  # starts on the last months
    assert spec["vconcat"][0]["concat"][0]["layer"][-1]["encoding"]["x"]["scale"]["domain"] == {"param": "range"}
    assert {p.get("bind") for p in params.values()} >= {"scales"}  # zoom / pan in each panel
    overview = spec["vconcat"][1]["encoding"]["x"]["scale"]["domain"]
    assert (overview[1] - overview[0]) // DAY >= 400  # the strip shows the whole history


def test_one_day_gets_a_week_axis_and_a_ctr_of_one_a_caveat() -> None:
    spec, page = _core_chart(_marts(days=1, open_lt7=1, ctr=1.0))
    low, high = spec["vconcat"][1]["encoding"]["x"]["scale"]["domain"]
    assert 6 * DAY <= high - low <= 8 * DAY  # not years
    caveats = page.split("<h2>Caveats</h2>")[1].split("<h2>")[0]
    assert "CTR is exactly 1.0 on 1 of 1 day(s)" in caveats and "mapping problem" in caveats
