"""Alerts: one JSON line per alert in the alerts log, a log record, and the configured webhooks.

Every alert of the platform goes through `raise_alert`: task failures (through the Airflow
notifier in tasks/ops/notifier.py) and data-quality findings (quarantine share, GX gates) alike.
A gate that rejects data raises its data-quality alert, then a `DataQualityRejected`: the DAG
wiring fails such a task at once (no retry) and the notifier adds no second alert for it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tasks.core.config import PlatformConfig, get_config

log = logging.getLogger("recpipe.alerts")

Severity = Literal["info", "warning", "critical"]
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class DataQualityRejected(RuntimeError):
    """A deterministic data-quality rejection whose data-quality alert has been raised: retrying
    cannot change it, and it needs no other alert."""


@dataclass(frozen=True)
class Alert:
    """What happened, where, and where to look."""

    kind: str  # e.g. task_failure, data_quality
    severity: Severity
    title: str
    source: str  # dag_id.task_id, or the CLI command
    details: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    ts: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())


def _slack_payload(alert: Alert) -> dict[str, Any]:
    lines = [f"*[{alert.severity.upper()}] {alert.title}*", f"source: `{alert.source}`"]
    lines += [f"• {k}: {v}" for k, v in alert.details.items()]
    lines += [f"<{url}|{name}>" for name, url in alert.links.items()]
    return {"text": "\n".join(lines)}


def _post(url: str, payload: dict[str, Any], timeout_s: float = 10.0) -> None:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (configured URL)
        resp.read()


def raise_alert(alert: Alert, cfg: PlatformConfig | None = None) -> Alert:
    """Record an alert: append it to the alerts log, log it, and post it to every webhook route.

    A webhook that fails is logged and recorded in the alerts log; it never hides the alert.
    """
    cfg = cfg or get_config()
    path = cfg.alerts_log
    path.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(alert)
    delivered: list[str] = []
    for route in cfg.alerts.routes:
        url = os.environ.get(route.webhook_url_env)
        if not url or _SEVERITY_RANK[alert.severity] < _SEVERITY_RANK[route.min_severity]:
            continue
        try:
            _post(url, _slack_payload(alert))
            delivered.append(route.name)
        except OSError as e:
            log.error("alert route %s failed: %s", route.name, e)
            record.setdefault("delivery_errors", {})[route.name] = str(e)
    record["delivered_to"] = delivered
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    level = logging.ERROR if alert.severity == "critical" else logging.WARNING
    log.log(level, "ALERT %s [%s] %s: %s", alert.kind, alert.severity, alert.title, alert.details)
    return alert


def read_alerts(cfg: PlatformConfig | None = None) -> list[dict[str, Any]]:
    """All alerts recorded so far, oldest first."""
    path = (cfg or get_config()).alerts_log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
