"""The nightly report: one self-contained HTML page of charts over the dbt marts, the content
pools (tasks/reports/pools.py), the KOL / implicit-follow tables (tasks/reports/social.py), the
retrieval evaluation and gate (tasks/reports/retrieval.py), the ranking evaluation, distillation
gate and fault drill (tasks/reports/ranking.py) and the feeds and funnel evaluation (tasks/reports/serving.py).

`write_report(cfg)` reads metrics_daily, retention_daily and ab_readout from the warehouse
(read-only) and writes `<reports>/metrics/metrics-<timestamp>.html`, then switches
`<reports>/metrics/index.html` to it (written aside, then renamed: never half-written).
Charts (interactive Vega-Lite, tasks/reports/fragments.py; the JavaScript inlined once, so the page
works offline): DAU, LT7, LT30, next-day retention, publishing penetration and CTR over time,
overall and per segment (values whose retention window is not complete yet drawn hollow, off the
line, over a grey band), the A/B readout with 95% confidence intervals, and the caveats
(docs/METHODS.md "Nightly report") (DAU up while LT7 down; the low-activity share of DAU; a CTR of
exactly 1.0, a sign of a mapping problem).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence

import altair as alt
import pandas as pd

from tasks.core.atomic import atomic_write
from tasks.core.config import ALL, PlatformConfig
from tasks.core.storage import Location
from tasks.core.warehouse import connect, table_names
from tasks.reports.experiments import experiments_section
from tasks.reports.fragments import FINAL, chart_scripts, html_table, interval_chart, time_chart
from tasks.reports.pools import pools_section
from tasks.reports.ranking import ranking_section
from tasks.reports.retrieval import retrieval_section
from tasks.reports.serving import serving_section
from tasks.reports.social import social_section

Panel = tuple[str, str, str | None, str]  # mart, value column, completeness flag (None: always final), title
OPEN_WINDOW = "not final (window still open)"
CORE_PANELS: tuple[Panel, ...] = (
    ("metrics_daily", "dau", None, "DAU"),
    ("metrics_daily", "penetration_rate", None, "Publishing penetration (publishers / DAU)"),
    ("metrics_daily", "ctr", None, "CTR (clicks / impressions)"),
    ("retention_daily", "lt7", "lt7_complete", "LT7 (days active in [d, d+6])"),
    ("retention_daily", "lt30", "lt30_complete", "LT30 (days active in [d, d+29])"),
    ("retention_daily", "next_day_retention", "next_day_complete", "Next-day retention"),
)
SEGMENT_PANELS: tuple[Panel, ...] = (
    ("metrics_daily", "dau", None, "DAU"),
    ("metrics_daily", "penetration_rate", None, "Penetration"),
    ("retention_daily", "lt7", "lt7_complete", "LT7"),
    ("retention_daily", "next_day_retention", "next_day_complete", "Next-day retention"),
)
AB_METRICS = ("dau", "lt7", "next_day_retention", "ctr", "penetration_rate", "session_duration_s_per_dau")
AB_OVER_TIME = ("dau", "lt7")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#1f2328}
h1{font-size:1.5rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem} th,td{border-bottom:1px solid #d0d7de;padding:.25rem .5rem;text-align:right}
th{background:#f6f8fa;position:sticky;top:0} .warn{background:#fff8c5;padding:.5rem 1rem;border-radius:.4rem}
.scroll{overflow:auto;max-width:100%;max-height:32rem;margin:.5rem 0} .chart{overflow-x:auto;margin:1rem 0}
.muted{color:#656d76}
"""


def reports_metrics_dir(cfg: PlatformConfig) -> Location:
    """Where metric reports go: `<reports>/metrics/`."""
    return cfg.reports_dir / "metrics"


def load_marts(cfg: PlatformConfig) -> dict[str, pd.DataFrame]:
    """The three marts the report draws, read-only (empty frames for marts not built yet)."""
    with connect(cfg, read_only=True) as con:
        present = table_names(con)
        return {  # before the first daily_metrics run: empty, and the report says so
            name: con.execute(f"select * from {name} order by all").df() if name in present else pd.DataFrame()
            for name in ("metrics_daily", "retention_daily", "ab_readout")
        }


def write_report(cfg: PlatformConfig, now: dt.datetime | None = None) -> Location:
    """Render the report from the warehouse; return the path of `index.html` (the latest)."""
    marts = load_marts(cfg)
    sections = [experiments_section(cfg), pools_section(cfg), social_section(cfg), retrieval_section(cfg),
                ranking_section(cfg), serving_section(cfg)]
    page = render_report(marts, generated=now or dt.datetime.now(dt.timezone.utc), sections=sections)
    out = reports_metrics_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%S")
    for path in (out / f"metrics-{stamp}.html", out / "index.html"):
        atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out / "index.html"


def _overall(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.segment == ALL) & (df.experiment_bucket == ALL)].sort_values("day")


def _by_segment(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.experiment_bucket == ALL].sort_values("day")


def panel_points(marts: dict[str, pd.DataFrame], panels: Sequence[Panel], series: str | None) -> pd.DataFrame:
    """The time_chart points (day, panel, series, value, status) of `panels` over the marts' rows:
    one series per value of the column `series` (or "all users"); a retention value whose window
    has not fully landed (its flag false) gets the status OPEN_WINDOW."""
    frames = []
    for mart, column, flag, title in panels:
        rows = marts[mart]
        final = rows[flag].astype("boolean").fillna(False).astype(bool) if flag else pd.Series(True, index=rows.index)
        frames.append(pd.DataFrame({
            "day": rows.day, "panel": title, "series": rows[series] if series else "all users",
            "value": rows[column].astype(float), "status": final.map({True: FINAL, False: OPEN_WINDOW})}))
    return pd.concat(frames, ignore_index=True)


def _over_time(metrics: pd.DataFrame, retention: pd.DataFrame) -> str:
    marts = {"metrics_daily": _overall(metrics), "retention_daily": _overall(retention)}
    return time_chart(panel_points(marts, CORE_PANELS, None), "Core metrics, all users",
                      panels=[p[3] for p in CORE_PANELS], apart=OPEN_WINDOW, shade_apart=True)


def _per_segment(metrics: pd.DataFrame, retention: pd.DataFrame) -> str:
    marts = {"metrics_daily": _by_segment(metrics), "retention_daily": _by_segment(retention)}
    return time_chart(panel_points(marts, SEGMENT_PANELS, "segment"), "Per segment",
                      panels=[p[3] for p in SEGMENT_PANELS], apart=OPEN_WINDOW, shade_apart=True, columns=2)


def _latest_complete(ab: pd.DataFrame) -> pd.DataFrame:
    """Per metric and bucket, the row of the latest day whose readout is complete."""
    done = ab[ab.is_complete & ab.metric.isin(AB_METRICS)].sort_values("day")
    return done.groupby(["metric", "experiment_bucket"], as_index=False).last()


def _ab_chart(ab: pd.DataFrame) -> str:
    rows = _latest_complete(ab)
    points = pd.DataFrame({
        "panel": [f"{m} (on {d:%Y-%m-%d})" for m, d in zip(rows.metric, rows.day)], "row": rows.experiment_bucket,
        "estimate": rows["diff"], "low": rows.ci_low, "high": rows.ci_high, "rel_lift": rows.rel_lift})
    order = [m for m in AB_METRICS if m in set(rows.metric)]
    points = points.iloc[rows.metric.map(order.index).argsort(kind="stable")]
    return interval_chart(points, "bucket - control, latest complete day (95% CI)",
                          tooltip=[alt.Tooltip("rel_lift:Q", format="+.2%")])


def _ab_over_time(ab: pd.DataFrame) -> str:
    rows = ab[ab.metric.isin(AB_OVER_TIME) & ab.is_complete].sort_values("day")
    points = pd.DataFrame({"day": rows.day, "panel": rows.metric + ": bucket - control (95% CI)",
                           "series": rows.experiment_bucket, "value": rows["diff"], "low": rows.ci_low,
                           "high": rows.ci_high})
    return time_chart(points, "A/B readout over time", columns=2,
                      panels=[f"{m}: bucket - control (95% CI)" for m in AB_OVER_TIME])


def _ab_table(ab: pd.DataFrame) -> str:
    rows = _latest_complete(ab).sort_values(["metric", "experiment_bucket"])
    cols = ["metric", "day", "experiment_bucket", "control_value", "bucket_value", "diff", "rel_lift", "ci_low", "ci_high"]
    return html_table(rows[cols])


def _caveats(metrics: pd.DataFrame, ab: pd.DataFrame) -> str:
    notes = []
    latest = _latest_complete(ab) if not ab.empty else pd.DataFrame(columns=["metric", "experiment_bucket", "diff"])
    for bucket, sub in latest[latest.metric.isin(["dau", "lt7"])].groupby("experiment_bucket"):
        lift = dict(zip(sub.metric, sub["diff"]))
        if lift.get("dau", 0) > 0 and lift.get("lt7", 0) < 0:
            notes.append(f"{html.escape(str(bucket))}: DAU up but LT7 down against control — not an improvement.")
    overall = _overall(metrics)
    saturated = overall[overall.ctr == 1.0]
    if len(saturated):
        notes.append(
            f"CTR is exactly 1.0 on {len(saturated)} of {len(overall)} day(s) (last {saturated.day.max():%Y-%m-%d}): "
            "every impression was clicked, a sign of a mapping problem (clicks logged without their impressions, "
            "or impressions mapped from clicks; docs/CONTRACT.md) — check the event mapping before reading CTR.")
    m = _by_segment(metrics)
    low = m[m.segment == "low_activity"].set_index("day").dau
    total = overall.set_index("day").dau
    if len(low):
        share = (low / total).dropna()
        notes.append(
            f"Low-activity users are {share.iloc[-1]:.1%} of DAU on the last day: removing them would lower "
            "DAU and raise LT — judge changes on both."
        )
    items = "".join(f"<li>{n}</li>" for n in notes) or "<li>No DAU-vs-LT conflict in the latest readout.</li>"
    return f'<div class="warn"><ul>{items}</ul></div>'


def render_report(
    marts: dict[str, pd.DataFrame], generated: dt.datetime, sections: list[str] | tuple[str, ...] = ()
) -> str:
    """The HTML page for the given marts, then the given HTML sections (content pools, KOLs and
    implicit follows, retrieval, ranking); when it has charts, the scripts drawing them at the end."""
    metrics, retention, ab = marts["metrics_daily"], marts["retention_daily"], marts["ab_readout"]
    if metrics.empty:
        body = "<p>No metrics yet: run the ingest and daily_metrics DAGs.</p>"
    else:
        has_ab = not ab.empty and bool(ab.is_complete.any())
        latest = _overall(metrics).iloc[-1]
        lt7_done = _overall(retention)
        lt7_done = lt7_done[lt7_done.lt7_complete]
        headline = (
            f"<p>Latest day {latest.day:%Y-%m-%d}: DAU {int(latest.dau):,}, penetration {latest.penetration_rate:.2%}"
            + (f"; last complete LT7 ({lt7_done.iloc[-1].day:%Y-%m-%d}): {lt7_done.iloc[-1].lt7:.3f}" if len(lt7_done) else "")
            + "</p>"
        )
        body = (
            headline
            + "<h2>Caveats</h2>" + _caveats(metrics, ab)
            + "<h2>Core metrics over time</h2>" + _over_time(metrics, retention)
            + "<h2>Per segment</h2>" + _per_segment(metrics, retention)
            + (
                "<h2>A/B readout</h2>" + _ab_chart(ab) + _ab_over_time(ab) + _ab_table(ab)
                if has_ab
                else "<h2>A/B readout</h2><p>No complete readout yet.</p>"
            )
        )
    content = body + "".join(sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>recpipe metrics</title><style>{_STYLE}</style>"
        f"</head><body><h1>recpipe — nightly report</h1><p class='muted'>generated {generated:%Y-%m-%d %H:%M} UTC"
        f" from the warehouse's marts, pools, social, retrieval and ranking tables</p>{content}"
        f"{chart_scripts(content)}</body></html>"
    )
