"""What the report's sections share: reading the warehouse (its table names, a table's latest day),
HTML pieces (scrolling tables, the "not built yet" and "no rows" hints) and the interactive charts.

Charts are Vega-Lite specs made with altair and drawn in the browser by vega-embed. Each builder
returns the chart as HTML: a <div class="chart"> holding its spec as a JSON <script> block
(`embed_chart` does the same for a chart made elsewhere; `embedded_specs` reads them back). They are
`time_chart` (values over days: tooltips, zoom/pan, a range selector, a 7-day rolling mean on long
histories, values not final drawn apart), `bar_chart`, `histogram` and `interval_chart` (estimates
with confidence intervals). `chart_scripts(content)`, once per page at the end of the body, inlines
the vega / vega-lite / vega-embed bundle of vl-convert (the page works offline) and draws every block.

It imports no other report module.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Callable, Iterable, Sequence

import altair as alt
import duckdb
import numpy as np
import pandas as pd
import vl_convert

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect, table_names

SPEC_TYPE = "application/vnd.vegalite+json"  # the <script> type of an embedded spec
CHART = '<div class="chart">'  # how an embedded chart starts
LONG_HISTORY_DAYS = 28  # longer: daily points and a 7-day rolling mean instead of a daily line
WINDOW_DAYS = 180  # the range selector's initial window on histories longer than a year
WIDTH = 1000  # the charts' width in pixels (the page is 1200 wide)
FINAL = "final"
ROWS = "rows"  # the name of a builder's top-level data until its rows are put in
FEW_USERS = "fewer users than evaluation.min_users"  # the status of evaluation values drawn apart
# altair checks every schema object against the Vega-Lite schema as it is built (its "debug mode"),
# and that and the charts' own checks were half of a report's time, rewritten at the end of every DAG
# run: off here; the tests check every chart of the pages they render (tests/charts.py).
alt.utils.schemapi.disable_debug_mode()

_DRAW = f"""
for (const block of document.querySelectorAll('script[type="{SPEC_TYPE}"]')) {{
  const target = document.createElement("div");
  block.after(target);
  vegaEmbed(target, JSON.parse(block.textContent), {{actions: false}}).catch(console.error);
}}
"""


def latest_day(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame:
    """The rows of `table`'s latest day."""
    return con.execute(f"select * from {table} where day = (select max(day) from {table})").df()


def not_built(what: str, how: str) -> str:
    """The muted "<what>: not built yet (<how>)." line of a part whose table is missing."""
    return f'<p class="muted">{html.escape(what)}: not built yet ({html.escape(how)}).</p>'


def no_rows(what: str) -> str:
    """The muted line of a part whose table exists but is empty: its last run found nothing."""
    return f'<p class="muted">No {html.escape(what)}: the last run found no rows.</p>'


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
    """A table cell's HTML: "–" when missing, floats to 4 significant digits, timestamps as dates
    (with the time when it is not midnight), anything else escaped."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, pd.Timestamp):
        return f"{value:%Y-%m-%d}" if value == value.normalize() else f"{value:%Y-%m-%d %H:%M}"
    return html.escape(str(value))


def html_table(frame: pd.DataFrame, warn: Iterable[bool] | None = None, raw: tuple[str, ...] = ()) -> str:
    """`frame` as an HTML table in a horizontally scrolling wrapper (cells through format_cell, but
    the columns in `raw`, which are HTML already); the rows where `warn` is true highlighted."""
    warn = [False] * len(frame) if warn is None else warn
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        ('<tr class="warn">' if w else "<tr>")
        + "".join(f"<td>{v if c in raw else format_cell(v)}</td>" for c, v in zip(frame.columns, row)) + "</tr>"
        for row, w in zip(frame.itertuples(index=False), warn)
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def ci_text(low: pd.Series, high: pd.Series) -> list[str | None]:
    """Confidence intervals as "[low, high]" (4 significant digits), None where either end is missing."""
    return [f"[{lo:.4g}, {hi:.4g}]" if pd.notna(lo) and pd.notna(hi) else None for lo, hi in zip(low, high)]


def has_ci(rows: pd.DataFrame) -> bool:
    """Whether evaluation rows carry a confidence interval (columns ci_low and ci_high, not all null)."""
    return {"ci_low", "ci_high"} <= set(rows) and bool(rows.ci_low.notna().any())


def few_users(rows: pd.DataFrame) -> pd.Series:
    """Per evaluation row, whether it averages over fewer users than evaluation.min_users (column
    below_min_users; false for rows written before it existed)."""
    if "below_min_users" not in rows:
        return pd.Series(False, index=rows.index)
    return rows.below_min_users.astype("boolean").fillna(False).astype(bool)


def few_users_note(rows: pd.DataFrame) -> str:
    """The warning naming the user groups of evaluation `rows` scored over fewer users than
    evaluation.min_users (their CIs are wide), or '' when there is none."""
    few = rows[few_users(rows)]
    if few.empty:
        return ""
    groups = few.groupby("segment").n_users.max().sort_values()
    return ('<p class="warn">' + html.escape(
        f"Fewer users scored than evaluation.min_users in {len(groups)} group(s): "
        + ", ".join(f"{g} ({n} users)" for g, n in groups.items())
        + "; their confidence intervals are wide: read these numbers with care.") + "</p>")


@functools.cache
def vega_bundle() -> str:
    """vega, vega-lite (the version altair writes) and vega-embed as one script (vl-convert's
    bundle: no network needed); built once per process (about 4 s)."""
    version = "_".join(alt.SCHEMA_VERSION.removeprefix("v").split(".")[:2])
    return vl_convert.javascript_bundle(vl_version=version).replace("</script", "<\\/script")


def vega_scripts() -> str:
    """The scripts a page with charts ends with: the bundle, then the loop drawing each spec block."""
    return f"<script>{vega_bundle()}</script><script>{_DRAW}</script>"


def chart_scripts(content: str) -> str:
    """What a page holding `content` (sections, say) ends its body with: vega_scripts when it has a
    chart, else nothing."""
    return vega_scripts() if CHART in content else ""


def embed_chart(chart: alt.TopLevelMixin) -> str:
    """`chart` (its data inline, small) as a <div class="chart"> holding its Vega-Lite spec (JSON),
    drawn by chart_scripts (checked against the Vega-Lite schema by the tests, see above)."""
    return _html(chart.to_dict(validate=False))


def _embed(chart: alt.TopLevelMixin, rows: list[dict]) -> str:
    """embed_chart of `chart`, whose top-level data is named ROWS, with `rows` put in as its values
    (altair would copy thousands of rows one by one: seconds)."""
    return _html({**chart.to_dict(validate=False), "data": {"values": rows}})


def _html(spec: dict) -> str:
    text = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")
    return f'{CHART}<script type="{SPEC_TYPE}">{text}</script></div>'


def embedded_specs(page: str) -> list[dict]:
    """The Vega-Lite specs embedded in `page` (HTML written with embed_chart), in page order."""
    pattern = f'<script type="{re.escape(SPEC_TYPE)}">(.*?)</script>'
    return [json.loads(block) for block in re.findall(pattern, page, re.DOTALL)]


def records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows (NaN as null, numpy scalars as numbers, 15 decimals, timestamps as
    "YYYY-MM-DD HH:MM" text)."""
    times = frame.select_dtypes("datetime").columns
    text = frame.assign(**{c: frame[c].dt.strftime("%Y-%m-%d %H:%M") for c in times})
    return json.loads(text.to_json(orient="records", double_precision=15))


def _iso(times: pd.Series) -> pd.Series:
    """Timestamps as ISO text that browsers parse as UTC (the charts' time scales are UTC): dates
    alone when every time is midnight, else with hours and minutes."""
    return times.dt.strftime("%Y-%m-%d" if (times == times.dt.normalize()).all() else "%Y-%m-%dT%H:%MZ")


def _ms(time: pd.Timestamp) -> int:
    return int(time.value // 1_000_000)


def _rolling_mean(frame: pd.DataFrame) -> pd.Series:
    """Per panel and series, the mean of the values drawn on the line over the last 7 days (a
    time window: missing days are not counted); null for the values drawn apart."""
    on_line = frame[frame.status == FINAL].sort_values("day")
    means = [group.set_index("day").value.rolling("7D").mean().set_axis(group.index)
             for _, group in on_line.groupby(["panel", "series"], sort=False)]
    return pd.concat(means).reindex(frame.index) if means else pd.Series(np.nan, index=frame.index)


def time_chart(points: pd.DataFrame, title: str, *, panels: Sequence[str] = (), apart: str | None = None,
               shade_apart: bool = False, band: tuple[float, float] | None = None, tooltip: Sequence[str] = (),
               y_scale: str = "linear", columns: int = 3, final_label: str = FINAL) -> str:
    """Values over time, one colour per series, in one panel per `panels` entry (or one), above an
    overview strip whose interval brush selects the panels' time range (drag it to pan, wheel over
    it to zoom; on histories over a year it starts on the last WINDOW_DAYS days).

    `points`: columns day (timestamps), series, value; optional panel (one of `panels`), status
    (values other than FINAL, e.g. `apart`, are drawn as hollow points off the line: a window not
    complete yet, a rejected version), low and high (a confidence band per series) and the
    `tooltip` columns. Up to LONG_HISTORY_DAYS distinct days the final values are joined by a line;
    longer histories get small daily points and a 7-day rolling mean line. Confidence intervals are
    vertical rules. `shade_apart` shades the span of the values drawn apart; `band` (low, high) is
    shaded as a gate band; `final_label` names the values on the line in the legend. Hovering a
    point shows its numbers; in a panel, drag or wheel zooms and pans the y axis (double-click
    resets). The time domain is padded (to a week at least): one point gets a week's axis, not years."""
    frame = points.reset_index(drop=True).copy()
    frame["panel"] = frame.get("panel", title)
    frame["status"] = frame.get("status", FINAL)
    panels = list(panels) or list(dict.fromkeys(frame.panel))
    days = pd.to_datetime(frame.day)
    long = days.dt.normalize().nunique() > LONG_HISTORY_DAYS
    if long:
        frame["rolling"] = _rolling_mean(frame.assign(day=days))
    span = days.max() - days.min()
    pad = max(span * 0.02, (pd.Timedelta(days=7) - span) / 2, pd.Timedelta(days=1))  # a week at least
    extent = [_ms(days.min() - pad), _ms(days.max() + pad)]
    start = days.max() - pd.Timedelta(days=WINDOW_DAYS) if span > pd.Timedelta(days=365) else days.min() - pad
    brush = alt.selection_interval(name="range", encodings=["x"], value={"x": [_ms(start), extent[1]]})
    frame["day"] = _iso(days)
    rows = records(frame)
    statuses = [FINAL] + sorted(set(frame.status) - {FINAL})
    color = alt.Color("series:N", title=None, sort=list(dict.fromkeys(frame.series)), legend=alt.Legend(labelLimit=320))
    tips = [alt.Tooltip("panel:N", title="chart"), alt.Tooltip("series:N", title="series"),
            alt.Tooltip("day:N", title="day"), alt.Tooltip("value:Q", format=".4~g"),
            alt.Tooltip("status:N"),
            *[alt.Tooltip(f"{c}:Q" if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool else f"{c}:N")
              for c in tooltip]]
    if "low" in frame:
        tips += [alt.Tooltip("low:Q", format=".4~g", title="CI low"),
                 alt.Tooltip("high:Q", format=".4~g", title="CI high")]
    if long:
        tips.append(alt.Tooltip("rolling:Q", format=".4~g", title="7-day mean"))
    width = WIDTH if len(panels) == 1 else WIDTH // min(columns, len(panels)) - 70
    ticks = {"tickCount": {"interval": "day", "step": 1}} if extent[1] - extent[0] <= 31 * 86_400_000 else {}
    x = alt.X("day:T", title=None, scale=alt.Scale(type="utc", domain={"param": brush.name}),
              axis=alt.Axis(format="%Y-%m-%d", labelAngle=-30, **ticks))
    y_type = alt.Scale(type=y_scale, zero=False)
    legend = alt.Legend(labelExpr=f"datum.label == '{FINAL}' ? {json.dumps(final_label)} : datum.label",
                        labelLimit=320)

    def panel(name: str, index: int) -> alt.LayerChart:
        here = f"datum.panel == {json.dumps(name)}"
        layers = []
        if band:
            layers.append(alt.Chart(alt.Data(values=[{"low": band[0], "high": band[1]}])).mark_rect(
                color="#2da44e", opacity=0.12).encode(y="low:Q", y2="high:Q", tooltip=[
                    alt.Tooltip("low:Q", title="gate band low"), alt.Tooltip("high:Q", title="gate band high")]))
        off = days[(frame.panel == name) & (frame.status != FINAL)]
        if shade_apart and len(off):
            first, last = off.min(), off.max()
            layers.append(alt.Chart(alt.Data(values=[{
                "start": _ms(first - pd.Timedelta(hours=12)), "end": _ms(last + pd.Timedelta(hours=12)),
                "what": apart or "not final"}])).mark_rect(color="#8c959f", opacity=0.15).encode(
                    x=alt.X("start:T", scale=alt.Scale(type="utc", domain={"param": brush.name}), title=None),
                    x2="end:T", tooltip=[alt.Tooltip("what:N", title="shaded")]))
        if "low" in frame:
            layers.append(alt.Chart().mark_rule(opacity=0.5).encode(x=x, y="low:Q", y2="high:Q", color=color)
                          .transform_filter(here))
        line_y = "rolling:Q" if long else "value:Q"
        layers.append(alt.Chart().mark_line(strokeWidth=2 if long else 1.5).encode(
            x=x, y=alt.Y(line_y, title=None, scale=y_type), color=color)
            .transform_filter(f"{here} && datum.status == '{FINAL}'"))
        points = alt.Chart().mark_point(filled=True, opacity=0.6 if long else 0.9, strokeWidth=1.5,
                                        size=12 if long else 40).encode(
            x=x, y=alt.Y("value:Q", title=None, scale=y_type), color=color, tooltip=tips)
        if len(statuses) > 1:  # the values apart: hollow and larger, with a legend
            points = points.encode(
                fillOpacity=alt.FillOpacity("status:O", title=None, legend=legend, sort=statuses, scale=alt.Scale(
                    domain=statuses, range=[1] + [0] * (len(statuses) - 1))),
                size=alt.Size("status:O", title=None, legend=legend, sort=statuses, scale=alt.Scale(
                    domain=statuses, range=[12 if long else 40] + [50] * (len(statuses) - 1))))
        layers.append(points.transform_filter(here).add_params(
            alt.selection_interval(name=f"zoom{index}", bind="scales", encodings=["y"])))
        return alt.layer(*layers).properties(width=width, height=220 if len(panels) == 1 else 170,
                                             title=name if len(panels) > 1 else "")

    views = [panel(name, i) for i, name in enumerate(panels)]
    detail = views[0] if len(views) == 1 else alt.concat(*views, columns=columns)
    overview = alt.Chart().mark_line(strokeWidth=1).encode(
        x=alt.X("day:T", title="drag or resize the grey range to choose the days above",
                scale=alt.Scale(type="utc", domain=extent), axis=alt.Axis(format="%Y-%m-%d", **ticks)),
        y=alt.Y(f"{'rolling' if long else 'value'}:Q", title=None, axis=None, scale=y_type),
        color=color,
    ).transform_filter(f"datum.panel == {json.dumps(panels[0])} && datum.status == '{FINAL}'").add_params(
        brush).properties(width=WIDTH, height=45)
    subtitle = ("daily points, line: 7-day rolling mean" if long else "daily values") + (
        f"; hollow points: {apart}" if apart and apart in statuses else "")
    return _embed(alt.vconcat(detail, overview, data=alt.Data(name=ROWS),
                              title=alt.Title(title, subtitle=subtitle, anchor="start")), rows)


def bar_chart(frame: pd.DataFrame, category: str, value: str, title: str, *, group: str | None = None,
              stacked: bool = False, horizontal: bool = False, value_title: str | None = None,
              tooltip: Sequence[str] = (), rule: float | None = None, rule_label: str = "",
              domain: tuple[float, float] | None = None) -> str:
    """Bars of `value` per `category` (in the frame's order), side by side per `group` (or stacked),
    with tooltips and a clickable legend (highlights a group); `rule` draws a dashed reference line
    labelled `rule_label`; `domain` fixes the value axis."""
    cats = list(dict.fromkeys(frame[category].astype(str)))
    groups = list(dict.fromkeys(frame[group].astype(str))) if group else []
    cat_channel, value_channel, offset = (alt.Y, alt.X, alt.YOffset) if horizontal else (alt.X, alt.Y, alt.XOffset)
    tips = [f"{category}:N", *([f"{group}:N"] if group else []), alt.Tooltip(f"{value}:Q", format=".4~g"), *tooltip]
    bars = alt.Chart().mark_bar(clip=True).encode(
        cat_channel(f"{category}:N", sort=cats, title=None, axis=alt.Axis(labelLimit=260)),
        value_channel(f"{value}:Q", title=value_title or value, stack="zero" if stacked else None,
                      scale=alt.Scale(domain=list(domain)) if domain else alt.Undefined),
        tooltip=tips)
    if group:
        pick = alt.selection_point(fields=[group], bind="legend")
        bars = bars.encode(color=alt.Color(f"{group}:N", sort=groups, title=None, legend=alt.Legend(labelLimit=320)),
                           opacity=alt.condition(pick, alt.value(1.0), alt.value(0.25))).add_params(pick)
        if not stacked:
            bars = bars.encode(offset(f"{group}:N", sort=groups))
    layers = [bars]
    if rule is not None:
        layers.append(alt.Chart().mark_rule(strokeDash=[4, 4], color="#1f2328").encode(
            value_channel(datum=rule), tooltip=alt.value(f"{rule_label}: {rule:.4g}") if rule_label else alt.Undefined))
    n_bars = len(cats) * (len(groups) if group and not stacked else 1)
    size = ({"width": WIDTH - 300, "height": alt.Step(20 if n_bars == len(cats) else 10)} if horizontal
            else {"width": min(WIDTH, max(300, 40 * n_bars)), "height": 220})
    return _embed(alt.layer(*layers, data=alt.Data(name=ROWS)).properties(title=title, **size), records(frame))


def histogram(values: pd.Series, title: str, x_title: str, *, log: bool = False) -> str:
    """The distribution of `values` as bars over bins computed here: 40 log-spaced bins on log axes
    (`log`, positive values only), else one bin per integer; tooltips give each bin's range and count."""
    values = values[values > 0] if log else values
    edges = (np.geomspace(values.min(), values.max() * 1.001, 41) if log
             else np.arange(np.floor(values.min()), np.ceil(values.max()) + 2) - 0.5)
    counts, edges = np.histogram(values, bins=edges)
    bins = pd.DataFrame({"start": edges[:-1], "end": edges[1:], "count": counts})
    bins = bins[bins["count"] > 0].assign(base=0.5) if log else bins.assign(base=0)  # a log axis has no 0
    scale = alt.Scale(type="log", nice=False) if log else alt.Undefined
    return _embed(alt.Chart(alt.Data(name=ROWS)).mark_bar(color="#0969da").encode(
        x=alt.X("start:Q", title=x_title, scale=scale), x2="end:Q",
        y=alt.Y("count:Q", title="users", scale=scale), y2="base:Q",
        tooltip=[alt.Tooltip("start:Q", format=".4~g", title="from"), alt.Tooltip("end:Q", format=".4~g", title="to"),
                 "count:Q"],
    ).properties(title=title, width=WIDTH // 2, height=200), records(bins))


def interval_chart(points: pd.DataFrame, x_title: str, *, color: str | None = None, colors: Sequence[str] = (),
                   tooltip: Sequence[alt.Tooltip | str] = (), panels: Sequence[str] = ()) -> str:
    """Estimates with their confidence intervals, one row per `row` (offset by `color`, if given),
    one panel per `panel` (own x scale, in the order of `panels`), a dashed line at 0. `points`:
    columns panel, row, estimate, low, high, `color` and the `tooltip` fields."""
    y = alt.Y("row:N", title=None)
    palette = alt.Scale(domain=list(dict.fromkeys(points[color])), range=list(colors)) if color and colors \
        else alt.Undefined
    extra = {"color": alt.Color(f"{color}:N", title=None, scale=palette), "yOffset": f"{color}:N"} if color else {}
    tips = [alt.Tooltip("panel:N", title="metric"), alt.Tooltip("row:N", title="arm"),
            *([f"{color}:N"] if color else []), alt.Tooltip("estimate:Q", format=".4g"),
            alt.Tooltip("low:Q", format=".4g"), alt.Tooltip("high:Q", format=".4g"), *tooltip]
    bars = alt.Chart().mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", title=x_title), x2="high:Q", y=y, tooltip=tips, **extra)
    dots = alt.Chart().mark_point(filled=True, size=60).encode(x="estimate:Q", y=y, tooltip=tips, **extra)
    zero = alt.Chart().mark_rule(strokeDash=[4, 4], color="grey").encode(x=alt.datum(0))
    return _embed(
        alt.layer(bars, dots, zero, data=alt.Data(name=ROWS))
        .properties(width=520, height=alt.Step(14))
        .facet(row=alt.Row("panel:N", title=None, sort=list(panels) or list(dict.fromkeys(points.panel)),
                           header=alt.Header(labelAngle=0, labelOrient="top", labelAnchor="start", labelAlign="left",
                                             labelFontWeight="bold")))
        .resolve_scale(x="independent"),
        records(points),
    )
