"""The nightly report: one self-contained HTML page of charts over the dbt marts, the content
pools (tasks/reports/pools.py), the KOL / implicit-follow tables (tasks/reports/social.py), the
retrieval evaluation and gate (tasks/reports/retrieval.py), the ranking evaluation, distillation
gate and fault drill (tasks/reports/ranking.py) and the feeds and funnel evaluation (tasks/reports/serving.py).

`write_report(cfg)` reads metrics_daily, retention_daily and ab_readout from the warehouse
(read-only) and writes `<reports>/metrics/metrics-<timestamp>.html`, then switches
`<reports>/metrics/index.html` to it (written aside, then renamed: never half-written).
Charts: DAU, LT7, LT30, next-day retention and publishing penetration over time, overall and per
segment (incomplete retention windows drawn hollow), the A/B readout with 95% confidence
intervals, and the caveats (docs/METHODS.md "Nightly report") (DAU up while LT7 down; the low-activity share of DAU).
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tasks.core.atomic import atomic_write
from tasks.core.config import ALL, PlatformConfig
from tasks.core.warehouse import connect, table_names
from tasks.reports.experiments import experiments_section
from tasks.reports.fragments import embed_png
from tasks.reports.pools import pools_section
from tasks.reports.ranking import ranking_section
from tasks.reports.retrieval import retrieval_section
from tasks.reports.serving import serving_section
from tasks.reports.social import social_section

RETENTION_METRICS = (("lt7", "lt7_complete", "LT7 (days active in [d, d+6])"),
                     ("lt30", "lt30_complete", "LT30 (days active in [d, d+29])"),
                     ("next_day_retention", "next_day_complete", "Next-day retention"))
AB_METRICS = ("dau", "lt7", "next_day_retention", "ctr", "penetration_rate", "session_duration_s_per_dau")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#1f2328}
h1{font-size:1.5rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem} th,td{border-bottom:1px solid #d0d7de;padding:.25rem .5rem;text-align:right}
th{background:#f6f8fa} .warn{background:#fff8c5;padding:.5rem 1rem;border-radius:.4rem}
img{max-width:100%} .muted{color:#656d76}
"""


def reports_metrics_dir(cfg: PlatformConfig) -> Path:
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


def write_report(cfg: PlatformConfig, now: dt.datetime | None = None) -> Path:
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


def line_with_open_window(ax: plt.Axes, days: pd.Series, values: pd.Series, complete: pd.Series | None, label: str) -> None:
    """The final values as a line; values whose window has not fully landed (complete false) as
    hollow markers apart from it, over a shaded "not final" band, so a partial window never reads
    as a drop."""
    final = complete.to_numpy(bool) if complete is not None else np.ones(len(days), bool)
    (line,) = ax.plot(days[final], values[final], label=label)
    if (~final).any():
        ax.scatter(days[~final], values[~final], facecolors="none", edgecolors=line.get_color(), zorder=3)
        first = days[~final].min()
        ax.axvspan(first - pd.Timedelta(hours=12), days[~final].max() + pd.Timedelta(hours=12), color="0.9",
                   zorder=0, label="not final (window still open)" if not _has_band(ax) else None)


def _has_band(ax: plt.Axes) -> bool:
    return any(t == "not final (window still open)" for t in ax.get_legend_handles_labels()[1])


def _over_time(metrics: pd.DataFrame, retention: pd.DataFrame) -> str:
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), sharex=True)
    m, r = _overall(metrics), _overall(retention)
    panels = [
        (axes[0, 0], m, "dau", None, "DAU"),
        (axes[0, 1], m, "penetration_rate", None, "Publishing penetration (publishers / DAU)"),
        (axes[0, 2], m, "ctr", None, "CTR (clicks / impressions)"),
    ] + [(ax, r, col, flag, title) for ax, (col, flag, title) in zip(axes[1], RETENTION_METRICS)]
    for ax, frame, col, flag, title in panels:
        line_with_open_window(ax, frame.day, frame[col], frame[flag] if flag else None, "all users")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.text(0.01, -0.02, "Hollow markers: the retention window has not fully landed yet (incomplete).", fontsize=8)
    return embed_png(fig)


def _per_segment(metrics: pd.DataFrame, retention: pd.DataFrame) -> str:
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True)
    m, r = _by_segment(metrics), _by_segment(retention)
    for seg in sorted(m.segment.unique()):
        ms, rs = m[m.segment == seg], r[r.segment == seg]
        axes[0].plot(ms.day, ms.dau, label=seg)
        axes[1].plot(ms.day, ms.penetration_rate, label=seg)
        line_with_open_window(axes[2], rs.day, rs.lt7, rs.lt7_complete, seg)
        line_with_open_window(axes[3], rs.day, rs.next_day_retention, rs.next_day_complete, seg)
    for ax, title in zip(axes, ("DAU", "Penetration", "LT7", "Next-day retention")):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.autofmt_xdate()
    return embed_png(fig)


def _latest_complete(ab: pd.DataFrame) -> pd.DataFrame:
    """Per metric and bucket, the row of the latest day whose readout is complete."""
    done = ab[ab.is_complete & ab.metric.isin(AB_METRICS)].sort_values("day")
    return done.groupby(["metric", "experiment_bucket"], as_index=False).last()


def _ab_chart(ab: pd.DataFrame) -> str:
    rows = _latest_complete(ab)
    metrics = [m for m in AB_METRICS if m in set(rows.metric)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 2.6), sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = rows[rows.metric == metric].sort_values("experiment_bucket")
        y = list(range(len(sub)))
        ax.errorbar(sub["diff"], y, xerr=[sub["diff"] - sub.ci_low, sub.ci_high - sub["diff"]], fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, sub.experiment_bucket)
        ax.set_title(f"{metric}\n(on {sub.day.max():%Y-%m-%d})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Bucket - control, latest complete day, 95% CI", fontsize=10, y=1.08)
    return embed_png(fig)


def _ab_over_time(ab: pd.DataFrame) -> str:
    metrics = ("dau", "lt7")
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 3.2))
    for ax, metric in zip(axes, metrics):
        sub = ab[(ab.metric == metric) & ab.is_complete].sort_values("day")
        for bucket, rows in sub.groupby("experiment_bucket"):
            (line,) = ax.plot(rows.day, rows["diff"], label=bucket)
            ax.fill_between(rows.day, rows.ci_low, rows.ci_high, color=line.get_color(), alpha=0.15)
        ax.axhline(0, color="grey", lw=1)
        ax.set_title(f"{metric}: bucket - control over time (95% CI band)", fontsize=9)
        ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return embed_png(fig)


def _ab_table(ab: pd.DataFrame) -> str:
    rows = _latest_complete(ab).sort_values(["metric", "experiment_bucket"])
    rows["day"] = rows.day.dt.strftime("%Y-%m-%d")
    cols = ["metric", "day", "experiment_bucket", "control_value", "bucket_value", "diff", "rel_lift", "ci_low", "ci_high"]
    return rows[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)


def _caveats(metrics: pd.DataFrame, ab: pd.DataFrame) -> str:
    notes = []
    latest = _latest_complete(ab)
    for bucket, sub in latest[latest.metric.isin(["dau", "lt7"])].groupby("experiment_bucket"):
        lift = dict(zip(sub.metric, sub["diff"]))
        if lift.get("dau", 0) > 0 and lift.get("lt7", 0) < 0:
            notes.append(f"{html.escape(str(bucket))}: DAU up but LT7 down against control — not an improvement.")
    m = _by_segment(metrics)
    low = m[m.segment == "low_activity"].set_index("day").dau
    total = _overall(metrics).set_index("day").dau
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
    """The HTML page (charts inlined as PNG) for the given marts, then the given HTML sections
    (content pools, KOLs and implicit follows, retrieval, ranking)."""
    metrics, retention, ab = marts["metrics_daily"], marts["retention_daily"], marts["ab_readout"]
    if metrics.empty:
        body = "<p>No metrics yet: run the ingest and daily_metrics DAGs.</p>"
    else:
        has_ab = bool(ab.is_complete.any())
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
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>recpipe metrics</title><style>{_STYLE}</style>"
        f"</head><body><h1>recpipe — nightly report</h1><p class='muted'>generated {generated:%Y-%m-%d %H:%M} UTC"
        f" from the warehouse's marts, pools, social, retrieval and ranking tables</p>{body}{''.join(sections)}</body></html>"
    )
