"""The plugin's pages other than the feed explorer (docs/METHODS.md "Airflow UI plugin"): the nightly
report files (the latest `index.html` and the dated `metrics-<stamp>.html` that `write_report`
writes), and the experiments, pools and models-and-gates pages, drawn by the report's own section
functions (the same queries and charts as the nightly report, nothing re-queried here).

A page ends with the report's `chart_scripts` (the Vega bundle and drawing loop when it holds a
chart).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tasks.core import registry
from tasks.core.config import PlatformConfig
from tasks.core.storage import Location
from tasks.experiments.readout import readout_table
from tasks.reports.experiments import experiments_section
from tasks.reports.fragments import chart_scripts, html_table
from tasks.reports.page import reports_metrics_dir
from tasks.reports.pools import pools_section
from tasks.reports.ranking import ranking_section
from tasks.reports.retrieval import retrieval_section

DATED = re.compile(r"metrics-(\d{8}T\d{6})\.html")
STAMP_FORMAT = "%Y%m%dT%H%M%S"
AFTER_RUN = dt.timedelta(hours=24)  # a run that wrote no report: its night's report follows within this


@dataclass(frozen=True)
class DatedReport:
    """One `metrics-<stamp>.html` of the reports folder; `written` is its stamp (UTC)."""

    stamp: str
    written: dt.datetime
    path: Location


def dated_reports(cfg: PlatformConfig) -> list[DatedReport]:
    """Every dated report, newest first."""
    folder = reports_metrics_dir(cfg)
    found = [(m, p) for p in folder.glob("metrics-*.html") if (m := DATED.fullmatch(p.name))] if folder.exists() else []
    reports = [DatedReport(m[1], dt.datetime.strptime(m[1], STAMP_FORMAT).replace(tzinfo=dt.UTC), p) for m, p in found]
    return sorted(reports, key=lambda r: r.written, reverse=True)


def latest_report(cfg: PlatformConfig) -> Location | None:
    """The latest report (`index.html`), None before the first."""
    path = reports_metrics_dir(cfg) / "index.html"
    return path if path.exists() else None


def find_report(cfg: PlatformConfig, key: str) -> DatedReport | None:
    """The dated report of `key`: a stamp (20260116T021500), or a day (2026-01-16: the last report
    written that day, UTC); None when there is none or `key` is neither."""
    reports = dated_reports(cfg)
    if re.fullmatch(r"\d{8}T\d{6}", key):
        return next((r for r in reports if r.stamp == key), None)
    try:
        day = dt.date.fromisoformat(key)
    except ValueError:
        return None
    return next((r for r in reports if r.written.date() == day), None)


def report_of_run(reports: list[DatedReport], start: dt.datetime, end: dt.datetime | None,
                  now: dt.datetime) -> DatedReport | None:
    """The night's report of a DAG run that ran from `start` to `end` (None: still running): the last
    report written while it ran; for a run that wrote none (ingest, whose Asset starts
    daily_metrics), the first written within AFTER_RUN after it ended."""
    end = end or now
    during = [r for r in reports if start <= r.written <= end]
    if during:
        return max(during, key=lambda r: r.written)
    after = [r for r in reports if end < r.written <= end + AFTER_RUN]
    return min(after, key=lambda r: r.written) if after else None


def reports_list(cfg: PlatformConfig, link: Callable[[str], str]) -> str:
    """The dated reports, newest first, each linked through link(stamp)."""
    reports = dated_reports(cfg)
    if not reports:
        return "<p class='muted'>No report yet: the DAGs that write report tables end with write_report.</p>"
    items = "".join(f"<li><a href='{html.escape(link(r.stamp))}'>{r.written:%Y-%m-%d %H:%M:%S} UTC</a></li>"
                    for r in reports)
    return f"<p>{len(reports)} dated reports, newest first.</p><ul class='reports'>{items}</ul>"


def _with_scripts(content: str) -> str:
    return content + chart_scripts(content)


def experiments_page(cfg: PlatformConfig) -> str:
    """Per configured experiment (cfg.experiments) its readout table (`readout_table`), then the
    report's experiments section (SRM, guardrails, forest plot, weekly lifts)."""
    parts = []
    for experiment in cfg.experiments:
        table = readout_table(cfg, experiment.name) if cfg.warehouse_path.exists() else pd.DataFrame()
        parts.append(f"<h2>{html.escape(experiment.name)}</h2>" + (
            html_table(table, [False] * len(table)) if len(table)
            else "<p class='muted'>No readout yet: the experiment has no served days in experiment_readout "
                 "(publish the assignments and run daily_metrics).</p>"))
    if not parts:
        parts.append("<p class='muted'>No experiment configured (`experiments:` in the config).</p>")
    return _with_scripts("".join(parts) + experiments_section(cfg))


def pools_page(cfg: PlatformConfig) -> str:
    """The report's pools section."""
    return _with_scripts(pools_section(cfg))


def models_page(cfg: PlatformConfig) -> str:
    """Every registry version (current marked), then the report's retrieval and ranking sections
    (evaluations and gates)."""
    rows = pd.DataFrame(registry.describe(cfg), columns=["model", "version", "current", "created_at", "window",
                                                         "parent", "metrics"]).drop(columns="metrics")
    versions = ("<h2>Model registry</h2>" + html_table(rows, rows.current) if len(rows)
                else "<h2>Model registry</h2><p class='muted'>No model trained yet.</p>")
    return _with_scripts(versions + retrieval_section(cfg) + ranking_section(cfg))
