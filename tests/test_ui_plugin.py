"""The recpipe Airflow UI plugin (plugins/recpipe_ui.py, tasks/ui/) in a real `airflow api-server`
on a free port (temporary AIRFLOW_HOME, the served simulation's data with a nightly report written
here), seen in headless Chromium: anonymous visitors get no data (the API 401, pages sent to the
login page); after the login the "recpipe" navigation entry opens the plugin, the latest and a dated
report render, the pools / experiments / models pages answer, and the feed explorer shows for a
typed user id the feed `recommend` computes in this process, beside the user's history; a
non-integer or unknown user id is a 4xx with its message. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import yaml

from tasks.core.config import PlatformConfig, load_config
from tasks.reports.page import write_report
from tasks.serving.context import last_data_day, load_context
from tasks.serving.funnel import recommend
from tasks.ui.pages import DatedReport, report_of_run
from tests.live import airflow_subprocess_env, free_port, request_json, stop_process_group, wait_for
from tests.test_browser import ARTIFACTS, UI_TIMEOUT_S, browser  # noqa: F401 (the Chromium fixture)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
START_TIMEOUT_S, FEED_TIMEOUT_S = 240, 240


@dataclass(frozen=True)
class PluginUI:
    """A running `airflow api-server` with the plugin, the platform it serves, and what the test
    computed from that platform itself."""

    url: str
    home: Path
    log: Path
    report: Path  # the dated report written here
    user: int  # a user with history
    unknown_user: int
    expected_items: list[int]  # `recommend` for `user`, computed in this process

    def password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of a GET that follows no redirect."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=FEED_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), dict(e.headers)


def _ui_config(world: PlatformConfig, folder: Path) -> Path:
    """The served world's config file with its reports and alerts in `folder` (the world is shared)."""
    raw = yaml.safe_load((world.data_root.parent / "recpipe.yaml").read_text())
    raw["paths"]["reports"] = str(folder / "reports")
    raw["paths"]["alerts_log"] = str(folder / "alerts" / "alerts.jsonl")
    path = folder / "recpipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def plugin_ui(served_world: tuple[PlatformConfig, dt.date],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginUI]:
    """`airflow db migrate` then `airflow api-server` (one worker) with the repo's plugins folder,
    started first; meanwhile this process writes the nightly report and computes the expected feed."""
    tmp = tmp_path_factory.mktemp("ui-plugin")
    config, home, port = _ui_config(served_world[0], tmp), tmp / "airflow", free_port()
    env = airflow_subprocess_env(home, config, AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}")
    log = tmp / "api-server.log"
    serve = f"{BIN}/airflow db migrate >/dev/null && exec {BIN}/airflow api-server -H 127.0.0.1 -p {port} -w 1"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["sh", "-c", serve],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        cfg = load_config(config)
        report = write_report(cfg)
        (dated,) = report.parent.glob("metrics-*.html")
        with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
            unknown = con.execute("select max(user_id) + 1000 from raw.users").fetchone()[0]
        ctx = load_context(cfg, last_data_day(cfg))
        user = int(np.sort(np.unique(ctx.clicks.user_id))[0])
        rows = recommend(ctx, np.array([user])).rows.sort_values("position")
        ui = PluginUI(f"http://127.0.0.1:{port}", home, log, dated, user, int(unknown), rows.item_id.tolist())

        def up() -> bool:
            assert proc.poll() is None, f"the api-server exited with {proc.returncode}\n{ui.log_tail()}"
            return (home / "simple_auth_manager_passwords.json.generated").exists() and \
                request_json(f"{ui.url}/api/v2/version")[0] == 200

        wait_for("the api-server and the generated password", up, START_TIMEOUT_S, context=ui.log_tail)
        # Warm the server while the browser starts and logs in: its first page and explorer requests
        # import the report and serving stacks and load the serving context (tens of seconds here).
        token = request_json(f"{ui.url}/auth/token", {"username": "admin", "password": ui.password()})[1]
        for path in ("models", f"api/feed/{user}"):
            threading.Thread(target=get, args=(f"{ui.url}/recpipe/{path}", token["access_token"]), daemon=True).start()
        yield ui
    finally:
        stop_process_group(proc, timeout_s=5)  # a throwaway server: no graceful drain needed


def _text(driver: Any) -> str:
    """The page's text; "" while the page is being replaced (a submitted form)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def _wait_text(driver: Any, texts: list[str], what: str, timeout: float = UI_TIMEOUT_S) -> None:
    wait_for(what, lambda: all(t in _text(driver) for t in texts), timeout, 0.5,
             context=lambda: f"url: {driver.current_url}\npage text:\n{_text(driver)[:2000]}")


def _element(driver: Any, xpath: str, what: str) -> Any:
    from selenium.webdriver.common.by import By

    def shown() -> Any:
        found = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed() and e.is_enabled()]
        return found[-1] if found else None

    return wait_for(what, shown, UI_TIMEOUT_S, 0.5, context=lambda: f"url: {driver.current_url}")


def _shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"ui-plugin-{name}.png"))


def _feed_items(driver: Any) -> list[int]:
    """The item_id column of the explorer's feed table."""
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.CSS_SELECTOR, "#feed table")
    heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    col = heads.index("item_id")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    return [int(tr.find_elements(By.TAG_NAME, "td")[col].text) for tr in rows]


def _explore(driver: Any, ui: PluginUI, user_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{ui.url}/recpipe/explorer")
    field = _element(driver, "//input[@name='user_id']", "the explorer's user id field")
    field.clear()
    field.send_keys(user_id)
    driver.find_element(By.XPATH, "//button[@type='submit']").click()


def test_report_of_run_is_the_nights_report() -> None:
    t = dt.datetime(2026, 1, 16, 2, tzinfo=dt.UTC)
    reports = [DatedReport(f"r{h}", t + dt.timedelta(hours=h), Path(f"r{h}")) for h in (-30, -1, 1, 2, 5)]
    hour = dt.timedelta(hours=1)
    assert report_of_run(reports, t, t + 3 * hour, t).stamp == "r2"  # the last written while it ran
    assert report_of_run(reports, t - 3 * hour, t - 2 * hour, t).stamp == "r-1"  # none during: the next one
    assert report_of_run(reports, t + 6 * hour, None, t + 7 * hour) is None  # running, none yet
    assert report_of_run(reports, t - 80 * hour, t - 79 * hour, t) is None  # none within a day after


def test_plugin_pages_behind_the_login_and_the_feed_explorer(plugin_ui: PluginUI, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    ui, driver = plugin_ui, browser

    # Anonymous: the JSON API 401, a page redirects to the login page, the browser shows no data.
    assert request_json(f"{ui.url}/recpipe/api/feed/{ui.user}")[0] == 401
    status, body, headers = get(f"{ui.url}/recpipe/report")
    assert status == 303 and "/auth/login" in headers["location"] and "nightly report" not in body
    driver.get(f"{ui.url}/recpipe/explorer?user_id={ui.user}")
    wait_for("the redirect to the login page", lambda: "/auth/login" in driver.current_url, UI_TIMEOUT_S, 0.5,
             context=lambda: driver.current_url)
    assert "Feed of user" not in _text(driver)
    _shot(driver, "01-anonymous-to-login")

    # Log in as test_browser does; then a token for the API checks.
    _element(driver, "//input[@name='username']", "the login form").send_keys("admin")
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(ui.password())
    _element(driver, "//button[@type='submit']", "the enabled login button").click()
    wait_for("the UI after login", lambda: "/auth/login" not in driver.current_url, UI_TIMEOUT_S, 0.5,
             context=lambda: _text(driver)[:2000])
    status, token_body = request_json(f"{ui.url}/auth/token", {"username": "admin", "password": ui.password()})
    assert status == 201
    token = token_body["access_token"]

    # The plugin is registered: the app under /recpipe, the nav entry and the DAG-run tab.
    plugins = request_json(f"{ui.url}/api/v2/plugins", token=token)[1]["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "recpipe"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/recpipe"]
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["name"] == "recpipe" and views["nav"]["nav_top_level"]
    assert views["dag_run"]["href"] == "/recpipe/report/run/{DAG_ID}/{RUN_ID}"

    # The "recpipe" navigation entry opens the plugin inside the UI.
    driver.get(f"{ui.url}/")
    _element(driver, "//a[contains(@href, 'plugin/recpipe')]", "the recpipe navigation entry").click()
    frame = _element(driver, "//iframe[@title='recpipe']", "the plugin's frame")
    driver.switch_to.frame(frame)
    _wait_text(driver, ["Latest nightly report", "Feed explorer"], "the plugin's overview in its frame")
    driver.switch_to.default_content()
    _shot(driver, "02-nav-entry")

    # The latest report and a dated one: the report file as written, with the plugin's tab bar.
    title = re.search(r"<title>(.*?)</title>", ui.report.read_text()).group(1)
    driver.get(f"{ui.url}/recpipe/report")
    wait_for("the latest report", lambda: driver.title == title, UI_TIMEOUT_S, 0.5, context=lambda: driver.title)
    _wait_text(driver, ["Dated reports", "Feed explorer"], "the tab bar over the report")
    _shot(driver, "03-report")
    driver.get(f"{ui.url}/recpipe/reports")
    _element(driver, "//ul[@class='reports']//a", "a dated report's link").click()
    wait_for("the dated report", lambda: driver.current_url.endswith(ui.report.stem.removeprefix("metrics-")),
             UI_TIMEOUT_S, 0.5, context=lambda: driver.current_url)
    assert driver.title == title
    for path, text in (("experiments", "playbook"), ("pools", "pool"), ("models", "Model registry")):
        status, body, _ = get(f"{ui.url}/recpipe/{path}", token)
        assert status == 200 and text in body, f"/recpipe/{path}: {status}\n{body[:1000]}"
    assert get(f"{ui.url}/recpipe/report/run/daily_metrics/no-such-run", token)[0] == 404

    # The feed explorer: the typed user's feed is the one recommend computes here; history beside it.
    _explore(driver, ui, str(ui.user))
    _wait_text(driver, [f"Feed of user {ui.user}", "Recent history"], "the user's feed", FEED_TIMEOUT_S)
    assert _feed_items(driver) == ui.expected_items
    history = driver.find_element(By.ID, "history").text
    assert re.search(r"\b(impression|click)\b", history), history
    assert re.search(r"score [-\d.e]+ = ", driver.find_element(By.ID, "feed").text)  # the explanation column
    _shot(driver, "04-feed-explorer")

    # Bad input: a 4xx with its message, never a 500.
    _explore(driver, ui, "abc")
    _wait_text(driver, ["user id must be an integer"], "the non-integer message")
    _shot(driver, "05-explorer-bad-id")
    _explore(driver, ui, str(ui.unknown_user))
    _wait_text(driver, [f"unknown user {ui.unknown_user}"], "the unknown-user message")
    assert get(f"{ui.url}/recpipe/explorer?user_id=abc", token)[0] == 422
    assert get(f"{ui.url}/recpipe/api/feed/{ui.unknown_user}", token)[0] == 404
    assert get(f"{ui.url}/recpipe/api/feed/-1", token)[0] == 422
    status, body, _ = get(f"{ui.url}/recpipe/api/feed/{ui.user}", token)
    assert status == 200 and [i["item_id"] for i in json.loads(body)["items"]] == ui.expected_items
