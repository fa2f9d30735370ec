"""Alert landing pages: alerts raised through tasks.ops.alerts, rendered as static HTML and read back
with the standard library's HTML parser."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from tasks.core.config import PlatformConfig
from tasks.ops.alert_pages import alert_page_path, render_alert_pages
from tasks.ops.alerts import Alert, raise_alert


class _Page(HTMLParser):
    """Collects the text, the links and the rows of alerts of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.hrefs: list[str] = []
        self.link_classes: dict[str, str] = {}
        self.row_ids: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
            self.link_classes[a.get("class") or ""] = a["href"]
        if tag == "tr" and a.get("class") == "alert":
            self.row_ids.append(a["id"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def joined(self) -> str:
        return "".join(self.text)


def _alert(title: str, ts: str, **kw: object) -> Alert:
    return Alert(
        kind=kw.pop("kind", "data_quality"),
        severity=kw.pop("severity", "warning"),
        title=title,
        source=kw.pop("source", "ingest.load_batch"),
        ts=ts,
        **kw,
    )  # type: ignore[arg-type]


def test_index_lists_every_alert_newest_first_with_a_page_each(platform: PlatformConfig) -> None:
    first = raise_alert(
        _alert(
            "quarantine share 4.0% > 1.0%",
            "2026-01-02T01:00:00+00:00",
            details={"quarantined": 40, "rows": 1000},
        ),
        platform,
    )
    second = raise_alert(
        _alert(
            "Airflow task failed",
            "2026-01-03T01:00:00+00:00",
            kind="task_failure",
            severity="critical",
            links={"log": "http://localhost:8080/log"},
        ),
        platform,
    )

    index = render_alert_pages(platform)

    assert index == platform.reports_dir / "alerts" / "index.html"
    page = _Page(index.read_text())
    assert page.row_ids == [alert_page_path(platform, a).stem.removeprefix("alert-") for a in (second, first)]
    for text in (
        "quarantine share 4.0% > 1.0%",
        "Airflow task failed",
        "critical",
        "warning",
        "data_quality",
        "task_failure",
        "ingest.load_batch",
        "quarantined",
        "40",
        "Task log",
    ):
        assert text in page.joined, text
    for alert in (first, second):
        own = alert_page_path(platform, alert)
        assert own.name in page.hrefs
        detail = _Page(own.read_text())
        assert alert.title in detail.joined and "index.html" in detail.hrefs
    assert "http://localhost:8080/log" in page.hrefs


def test_content_is_escaped_and_unsafe_links_are_not_links(platform: PlatformConfig) -> None:
    evil = "<script>alert('x')</script>"
    alert = raise_alert(
        _alert(
            evil,
            "2026-01-02T00:00:00+00:00",
            source=f"dag.{evil}",
            details={"error": evil, "rows": [evil]},
            links={"bad": "javascript:alert(1)", "data_docs": "file:///gx/index.html"},
        ),
        platform,
    )

    index = render_alert_pages(platform)

    for path in (index, alert_page_path(platform, alert)):
        raw = path.read_text()
        assert "<script>" not in raw and "&lt;script&gt;" in raw
        page = _Page(raw)
        assert evil in page.joined  # shown to the reader as text
        assert "javascript:alert(1)" not in page.hrefs
        assert page.link_classes["link-data_docs"] == "file:///gx/index.html"
        assert "Data docs" in page.joined


def test_pages_mirror_the_log_and_an_empty_log_renders(platform: PlatformConfig) -> None:
    index = render_alert_pages(platform)
    assert "No alerts recorded." in _Page(index.read_text()).joined

    alert = raise_alert(_alert("old", "2026-01-01T00:00:00+00:00"), platform)
    render_alert_pages(platform)
    assert alert_page_path(platform, alert).exists()

    platform.alerts_log.unlink()  # the log was rotated away: its pages go too
    render_alert_pages(platform)
    assert list(Path(index.parent).glob("alert-*.html")) == []


def test_an_alert_knows_its_page_before_it_is_logged(platform: PlatformConfig) -> None:
    alert = _alert("before", "2026-01-05T00:00:00+00:00")
    expected = alert_page_path(platform, alert)
    raise_alert(alert, platform)
    render_alert_pages(platform)
    assert expected.exists()
