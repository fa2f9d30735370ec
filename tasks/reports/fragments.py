"""What the report's sections share: reading the warehouse (its table names, a table's latest day),
HTML pieces (table cells, highlighted tables, the "not built yet" hint) and charts (inline PNG,
lines over days).

It imports no other report module. Importing it selects matplotlib's Agg backend (the report is
drawn without a display, inside Airflow tasks too).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable, Sequence

import duckdb
import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402  (after the backend is chosen)
import matplotlib.pyplot as plt  # noqa: E402

from tasks.core.config import PlatformConfig  # noqa: E402
from tasks.core.warehouse import connect, table_names  # noqa: E402


def latest_day(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame:
    """The rows of `table`'s latest day."""
    return con.execute(f"select * from {table} where day = (select max(day) from {table})").df()


def not_built(what: str, how: str) -> str:
    """The muted "<what>: not built yet (<how>)." line of a part whose table is missing or empty."""
    return f'<p class="muted">{html.escape(what)}: not built yet ({html.escape(how)}).</p>'


Part = tuple[str, Callable[[duckdb.DuckDBPyConnection], str], tuple[str, str]]  # table, render, (what, how)


def warehouse_parts(cfg: PlatformConfig, parts: Sequence[Part]) -> list[str]:
    """Each part drawn from the warehouse when its table exists, else its "not built yet" hint
    (every part's, with "no warehouse yet", when there is no warehouse)."""
    if not cfg.warehouse_path.exists():
        return [not_built(what, "no warehouse yet") for _, _, (what, _) in parts]
    with connect(cfg, read_only=True) as con:
        tables = table_names(con)
        return [render(con) if table in tables else not_built(*hint) for table, render, hint in parts]


def format_cell(value: object) -> str:
    """A table cell's HTML: "–" when missing, floats to 4 significant digits, timestamps as dates,
    anything else escaped."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, pd.Timestamp):
        return f"{value:%Y-%m-%d}"
    return html.escape(str(value))


def html_table(frame: pd.DataFrame, warn: Iterable[bool], raw: tuple[str, ...] = ()) -> str:
    """`frame` as an HTML table (cells through format_cell, but the columns in `raw`, which are HTML
    already); the rows where `warn` is true highlighted."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        ('<tr class="warn">' if w else "<tr>")
        + "".join(f"<td>{v if c in raw else format_cell(v)}</td>" for c, v in zip(frame.columns, row)) + "</tr>"
        for row, w in zip(frame.itertuples(index=False), warn)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embed_png(fig: plt.Figure) -> str:
    """`fig` as an <img> with the PNG inlined (base64), so the page stands alone; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def lines_over_days(wide: pd.DataFrame, title: str, xlabel: str, band: tuple[float, float] | None = None) -> str:
    """One line per column of `wide` (indexed by day), dated ticks, the legend outside on the right;
    `band` (low, high), if given, shaded as the gate band. The chart as embed_png's <img>."""
    fig, ax = plt.subplots(figsize=(13, 3.8))
    for label, values in wide.items():
        ax.plot(wide.index, values, marker="o", label=label)
    if band:
        ax.axhspan(*band, color="#2da44e", alpha=0.1, label=f"gate band [{band[0]:g}, {band[1]:g}]")
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, len(wide) // 10)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return embed_png(fig)
