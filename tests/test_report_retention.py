"""The report's retention lines: values whose window has not landed yet (LT7 over the last 6 days)
are drawn apart from the final line, over a shaded "not final" band, so they never read as a drop."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.reports.page import line_with_open_window  # noqa: E402


def test_open_windows_are_not_joined_to_the_final_line() -> None:
    days = pd.Series(pd.date_range("2026-01-01", periods=10, freq="D"))
    lt7 = pd.Series([3.0] * 4 + [2.9, 2.5, 2.0, 1.6, 1.3, 1.0])  # the last 6 windows still open
    complete = pd.Series([True] * 4 + [False] * 6)
    fig, ax = plt.subplots()
    line_with_open_window(ax, days, lt7, complete, "all users")
    (line,) = ax.lines
    assert list(pd.to_datetime(line.get_xdata())) == list(days[:4])  # the line holds final values only
    (points,) = ax.collections
    assert np.allclose(points.get_offsets()[:, 1], lt7[4:])  # the open ones as separate markers
    (band,) = ax.patches
    x0, x1 = sorted(band.get_bbox().intervalx)
    span = matplotlib.dates.num2date([x0, x1])
    assert span[0].date() <= days[4].date() and span[1].date() >= days[9].date()
    assert "not final" in " ".join(ax.get_legend_handles_labels()[1])
    plt.close(fig)


def test_a_fully_landed_series_is_one_line_without_a_band() -> None:
    days = pd.Series(pd.date_range("2026-01-01", periods=5, freq="D"))
    fig, ax = plt.subplots()
    line_with_open_window(ax, days, pd.Series([1.0, 2, 3, 4, 5]), pd.Series([True] * 5), "all users")
    assert len(ax.lines[0].get_xdata()) == 5 and not ax.patches and not ax.collections
    plt.close(fig)
