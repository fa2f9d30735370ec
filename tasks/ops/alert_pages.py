"""Alert landing pages: the alerts log (tasks/ops/alerts.py) rendered as static HTML.

`render_alert_pages(cfg)` writes `<reports>/alerts/index.html` (every alert, newest first: time,
severity, kind, source, title, details, links) and one page per alert,
`<reports>/alerts/alert-<id>.html`, whose name depends only on the alert's time, kind, source and
title, so an alert can link to its page before the page is rendered (`alert_page_path`). A
`data_docs` entry of an alert's `links` (Great Expectations data docs) is shown first, as
"Data docs". Every value is HTML-escaped, and only http(s), file and relative links become links.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from tasks.core.config import PlatformConfig
from tasks.core.storage import Location
from tasks.ops.alerts import Alert, read_alerts

PAGE_PREFIX = "alert-"
_SAFE_SCHEMES = {"", "http", "https", "file"}
_LINK_LABELS = {"data_docs": "Data docs", "log": "Task log"}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}
h1{font-size:1.4rem} table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #d0d7de;padding:.4rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} .sev{font-weight:600;padding:.1rem .4rem;border-radius:.3rem}
.sev-critical{background:#ffebe9;color:#cf222e} .sev-warning{background:#fff8c5;color:#9a6700}
.sev-info{background:#ddf4ff;color:#0969da}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
dt{font-weight:600} pre{margin:0;white-space:pre-wrap} .muted{color:#656d76}
"""


def alert_id(alert: Mapping[str, Any] | Alert) -> str:
    """Stable id of an alert, from its time, kind, source and title (known before it is logged)."""
    a = alert if isinstance(alert, Mapping) else asdict(alert)
    key = "|".join(str(a.get(k, "")) for k in ("ts", "kind", "source", "title"))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def alerts_pages_dir(cfg: PlatformConfig) -> Location:
    """The folder of the alert pages: `<reports>/alerts`."""
    return cfg.reports_dir / "alerts"


def alert_page_path(cfg: PlatformConfig, alert: Mapping[str, Any] | Alert) -> Location:
    """Where the page of one alert is (or will be) rendered."""
    return alerts_pages_dir(cfg) / f"{PAGE_PREFIX}{alert_id(alert)}.html"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _safe_href(url: str) -> str | None:
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in _SAFE_SCHEMES else None


def _links_html(links: Mapping[str, str]) -> str:
    ordered = sorted(links.items(), key=lambda kv: (kv[0] != "data_docs", kv[0]))
    parts = []
    for name, url in ordered:
        label = _e(_LINK_LABELS.get(name, name))
        href = _safe_href(str(url))
        parts.append(
            f'<a href="{_e(href)}" class="link-{_e(name)}">{label}</a>'
            if href
            else f'{label}: <span class="muted">{_e(url)}</span>'
        )
    return " · ".join(parts) or '<span class="muted">none</span>'


def _value_html(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"<pre>{_e(json.dumps(value, indent=2, default=str))}</pre>"
    return _e(value)


def _details_html(details: Mapping[str, Any]) -> str:
    if not details:
        return '<span class="muted">none</span>'
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_value_html(v)}</dd>" for k, v in details.items())
    return f"<dl>{rows}</dl>"


def _severity_html(severity: str) -> str:
    return f'<span class="sev sev-{_e(severity)}">{_e(severity)}</span>'


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _sort_key(alert: Mapping[str, Any]) -> dt.datetime:
    try:
        ts = dt.datetime.fromisoformat(str(alert.get("ts")))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)


def render_index(alerts: list[Mapping[str, Any]], generated_at: str) -> str:
    """The HTML of the alerts index: one row per alert, newest first."""
    rows = []
    for a in sorted(alerts, key=_sort_key, reverse=True):
        page = f"{PAGE_PREFIX}{alert_id(a)}.html"
        rows.append(
            f'<tr class="alert" id="{_e(alert_id(a))}">'
            f"<td>{_e(a.get('ts', ''))}</td><td>{_severity_html(str(a.get('severity', '')))}</td>"
            f"<td>{_e(a.get('kind', ''))}</td><td>{_e(a.get('source', ''))}</td>"
            f'<td><a href="{_e(page)}">{_e(a.get("title", ""))}</a></td>'
            f"<td>{_details_html(a.get('details') or {})}</td>"
            f"<td>{_links_html(a.get('links') or {})}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>time (UTC)</th><th>severity</th><th>kind</th><th>source</th>"
        f"<th>alert</th><th>details</th><th>links</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No alerts recorded.</p>'
    )
    body = (
        f"<h1>recpipe alerts ({len(alerts)})</h1>"
        f'<p class="muted">Newest first. Generated {_e(generated_at)} from the alerts log.</p>{table}'
    )
    return _page("recpipe alerts", body)


def render_alert(alert: Mapping[str, Any]) -> str:
    """The HTML page of one alert."""
    delivered = ", ".join(alert.get("delivered_to") or []) or "no webhook"
    errors = alert.get("delivery_errors") or {}
    body = (
        '<p><a href="index.html">&larr; all alerts</a></p>'
        f"<h1>{_severity_html(str(alert.get('severity', '')))} {_e(alert.get('title', ''))}</h1>"
        "<dl>"
        f"<dt>time (UTC)</dt><dd>{_e(alert.get('ts', ''))}</dd>"
        f"<dt>kind</dt><dd>{_e(alert.get('kind', ''))}</dd>"
        f"<dt>source</dt><dd>{_e(alert.get('source', ''))}</dd>"
        f"<dt>delivered to</dt><dd>{_e(delivered)}</dd>"
        + (f"<dt>delivery errors</dt><dd>{_details_html(errors)}</dd>" if errors else "")
        + f"<dt>links</dt><dd>{_links_html(alert.get('links') or {})}</dd></dl>"
        f"<h2>Details</h2>{_details_html(alert.get('details') or {})}"
    )
    return _page(f"recpipe alert: {alert.get('title', '')}", body)


def render_alert_pages(cfg: PlatformConfig) -> Location:
    """Render the alerts log into `<reports>/alerts/` (index + one page per alert); return the index.

    Pages of alerts no longer in the log are removed, so the folder mirrors the log.
    """
    alerts = read_alerts(cfg)
    out = alerts_pages_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    pages = {alert_page_path(cfg, a): render_alert(a) for a in alerts}
    for stale in set(out.glob(f"{PAGE_PREFIX}*.html")) - set(pages):
        stale.unlink()
    for path, text in pages.items():
        path.write_text(text, encoding="utf-8")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    index = out / "index.html"
    index.write_text(render_index(alerts, now), encoding="utf-8")
    return index
