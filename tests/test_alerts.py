"""Alerts: the JSON-lines log, the Slack-compatible webhook (a real local HTTP server), and the
Airflow notifier that turns a failed task into an alert."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.core.config import load_config
from tasks.ops.alerts import Alert, raise_alert, read_alerts
from tests.conftest import write_config


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(
            {"path": self.path, "ctype": self.headers["Content-Type"], "body": json.loads(body)}
        )
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000", _Hook.received
    server.shutdown()
    server.server_close()


def _alert(severity: str = "warning") -> Alert:
    return Alert(
        kind="data_quality",
        severity=severity,  # type: ignore[arg-type]
        title="quarantined share 12.0% > 1.0%",
        source="ingest.load_batch",
        details={"batch": "dt=2026-01-02", "null_key": 3},
        links={"data docs": "file:///tmp/docs/index.html"},
    )


def test_alert_is_logged_as_one_json_line(platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECPIPE_SLACK_WEBHOOK_URL", raising=False)
    raise_alert(_alert(), platform)
    raise_alert(_alert("critical"), platform)
    lines = platform.alerts_log.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["kind"] == "data_quality" and first["details"]["null_key"] == 3
    assert first["delivered_to"] == []
    assert [a["severity"] for a in read_alerts(platform)] == ["warning", "critical"]


def test_webhook_receives_slack_payload(platform, webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    url, received = webhook
    monkeypatch.setenv("RECPIPE_SLACK_WEBHOOK_URL", url)
    raise_alert(_alert(), platform)
    assert len(received) == 1
    assert received[0]["path"] == "/services/T000/B000"
    assert received[0]["ctype"] == "application/json"
    text = received[0]["body"]["text"]
    assert "[WARNING] quarantined share 12.0% > 1.0%" in text and "null_key: 3" in text
    assert read_alerts(platform)[0]["delivered_to"] == ["team_slack"]


def test_webhook_respects_min_severity(tmp_path: Path, webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    url, received = webhook
    cfg_path = write_config(
        tmp_path / "c.yaml",
        tmp_path / "data",
        alerts={"routes": [{"name": "pager", "webhook_url_env": "PAGER_URL", "min_severity": "critical"}]},
    )
    cfg = load_config(cfg_path)
    monkeypatch.setenv("PAGER_URL", url)
    raise_alert(_alert("warning"), cfg)
    raise_alert(_alert("critical"), cfg)
    assert len(received) == 1 and "[CRITICAL]" in received[0]["body"]["text"]
    assert len(read_alerts(cfg)) == 2


def test_unreachable_webhook_never_hides_the_alert(platform, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RECPIPE_SLACK_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook")
    raise_alert(_alert(), platform)
    (record,) = read_alerts(platform)
    assert record["delivered_to"] == [] and "team_slack" in record["delivery_errors"]


def test_notifier_turns_task_failure_into_alert(platform, webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.ops.notifier import RecpipeNotifier

    url, received = webhook
    monkeypatch.setenv("RECPIPE_SLACK_WEBHOOK_URL", url)
    ti = SimpleNamespace(dag_id="ingest", task_id="load_batch", try_number=2, log_url="http://localhost:8080/log")
    RecpipeNotifier()({"ti": ti, "run_id": "scheduled__2026-01-02", "exception": ValueError("bad file")})
    (record,) = read_alerts(platform)
    assert record["kind"] == "task_failure" and record["severity"] == "critical"
    assert record["source"] == "ingest.load_batch"
    assert record["details"]["error"] == "ValueError: bad file"
    assert record["links"]["log"] == "http://localhost:8080/log"
    assert "ingest.load_batch" in received[0]["body"]["text"]


def test_notifier_adds_no_second_alert(platform) -> None:
    """A task failed by a data-quality rejection has its gate's alert; a run failed by its tasks has
    theirs: the notifier adds none. Any other failure is alerted."""
    from tasks.ops.notifier import RecpipeNotifier
    from tasks.pools.refresh import PoolRejected

    ti = SimpleNamespace(dag_id="content_pools", task_id="publish_pool_1d", try_number=1)
    RecpipeNotifier()({"ti": ti, "exception": PoolRejected("pool pool_1d: rejected version(s) 20260113T0000")})
    run = {"ti": SimpleNamespace(dag_id="content_pools", task_id=None), "run_id": "manual__1"}
    RecpipeNotifier(title="Airflow DAG run failed")({**run, "reason": "task_failure"})
    assert read_alerts(platform) == []
    RecpipeNotifier(title="Airflow DAG run failed")({**run, "reason": "timed_out"})
    (record,) = read_alerts(platform)
    assert record["source"] == "content_pools" and record["details"]["reason"] == "timed_out"


def test_a_data_quality_rejection_is_not_retried(platform) -> None:
    """Every task's retry policy fails a DataQualityRejected at once (whatever airflow.retries) and
    leaves any other error to the retries."""
    from airflow.sdk import RetryAction

    from tasks.orchestration.wiring import default_args
    from tasks.retrieval.nightly import ModelRejected

    policy = default_args(platform)["retry_policy"]
    assert policy.evaluate(ModelRejected("two_tower v2 failed its gate"), try_number=1, max_tries=3).action \
        == RetryAction.FAIL
    assert policy.evaluate(OSError("connection reset"), try_number=1, max_tries=3).action == RetryAction.DEFAULT
