"""The Airflow UI as a person uses it, in headless Chromium (Selenium, Debian's chromium and
chromium-driver): `airflow standalone` on a free port with a temporary home and data dir, ingest in
landing mode over a crafted batch with bad rows. The UI refuses anonymous visitors, the login page
takes the generated password, every recpipe DAG is listed with no import errors, the ingest DAG is
triggered with its Trigger button and succeeds, the task log shows the data-quality alert, the
alert landing page lists it, and the ingest Asset schedules daily_metrics, whose dbt build (one task,
`airflow.dbt_tasks: per_dag`) makes the day's metrics from the rows that passed. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tasks.core.config import load_config
from tasks.ops.alert_pages import render_alert_pages
from tests.conftest import write_config
from tests.live import (
    airflow_subprocess_env,
    free_port,
    request_json,
    require_system_tool,
    stop_process_group,
    wait_for,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1440,1000",
)
START_TIMEOUT_S, RUN_TIMEOUT_S, UI_TIMEOUT_S = 180, 240, 120  # bounds on waits, not timing targets

# A day's batch with 3 bad rows in 12 (unknown event type, negative dwell, unknown user):
# 25% quarantined, above the 5% alert threshold of this test's config. Every timestamp lies in
# the first seconds of the day, so that none is later than the load time (ts_in_future).
USERS = """user_id,signup_ts,gender,age_bucket,city_tier,country
1,{day} 00:00:01,f,18-24,2,DE
2,{day} 00:00:02,m,25-34,1,
3,{day} 00:00:03,u,unknown,0,FR
"""
ITEMS = """item_id,author_id,category_l1,category_l2,content_cluster,publish_ts,duration_ms,expire_ts
10,3,music,music/pop,7,{day} 00:00:04,15000,
"""
EVENTS = """event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket,referrer_user_id,position
1,{day} 00:00:05,1,100,,session_start,,control,,
2,{day} 00:00:06,1,100,10,impression,,control,,0
3,{day} 00:00:07,1,100,10,click,5300,control,,0
4,{day} 00:00:08,1,100,10,like,,control,,
5,{day} 00:00:09,1,100,10,teleport,,control,,
6,{day} 00:00:10,2,101,10,click,-40,control,,
7,{day} 00:00:11,99,102,10,click,100,control,,
8,{day} 00:00:12,1,100,,session_end,300000,control,,
"""


@dataclass(frozen=True)
class AirflowUI:
    """A running `airflow standalone` and the platform it serves."""

    url: str
    password_file: Path
    config: Path
    log: Path
    day: dt.date  # of the crafted batch, and of the run the UI triggers

    def password(self) -> str:
        return json.loads(self.password_file.read_text())["admin"]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    """`airflow standalone` with ingest in landing mode and a crafted batch for today's run."""
    tmp = tmp_path_factory.mktemp("airflow-ui")
    data, home = tmp / "data", tmp / "airflow"
    now = dt.datetime.now(dt.UTC)
    if now.time() < dt.time(0, 0, 30):  # the batch's timestamps must not lie in the future
        time.sleep(30 - now.second)
    today = dt.datetime.now(dt.UTC).date()
    # The DAG starts today (its start date is the simulator's) and is scheduled for 29 February
    # only, so the scheduler makes no run of its own: the one run is the UI's trigger (the hourly
    # pools too, whose run would hold the writer slot while ingest waits for it).
    cfg = write_config(
        tmp / "recpipe.yaml",
        data,
        ingest={"source": "landing", "quarantine_alert_share": 0.05},
        simulator={"start_date": today.isoformat()},
        schedules={"ingest": "0 0 29 2 *", "pools_hourly": "0 0 29 2 *"},
        airflow={"dbt_tasks": "per_dag"},  # one dbt build task: the per-model tasks are tests/test_dag_integrity.py's
    )
    batch = data / "landing" / f"dt={today.isoformat()}"
    batch.mkdir(parents=True)
    for name, text in (("users.csv", USERS), ("items.csv", ITEMS), ("events.csv", EVENTS)):
        (batch / name).write_text(text.format(day=today.isoformat()))

    port = free_port()
    env = airflow_subprocess_env(  # PATH: standalone starts `airflow` subprocesses
        home, cfg,
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
    )
    setup = subprocess.run(
        [str(BIN / "recpipe"), "airflow-setup"], env=env, capture_output=True, text=True, timeout=300
    )
    assert setup.returncode == 0, setup.stderr[-3000:]

    log = tmp / "standalone.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "standalone"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ui = AirflowUI(
        f"http://127.0.0.1:{port}", home / "simple_auth_manager_passwords.json.generated", cfg, log, today
    )
    try:

        def up() -> bool:
            assert proc.poll() is None, f"airflow standalone exited with {proc.returncode}\n{ui.log_tail()}"
            return ui.password_file.exists() and request_json(f"{ui.url}/api/v2/version")[0] == 200

        wait_for("the api-server and the generated password", up, START_TIMEOUT_S, context=ui.log_tail)
        yield ui
    finally:
        stop_process_group(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium through its chromedriver (nothing downloaded)."""
    require_system_tool(CHROMIUM.exists() and CHROMEDRIVER.exists(), "chromium + chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(UI_TIMEOUT_S)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.save_screenshot(str(ARTIFACTS / "last.png"))
        driver.quit()


def _shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_text(driver: Any, texts: list[str], what: str) -> None:
    wait_for(
        what,
        lambda: all(t in _page_text(driver) for t in texts),
        UI_TIMEOUT_S,
        0.5,
        context=lambda: f"url: {driver.current_url}\npage text:\n{_page_text(driver)[:2000]}",
    )


def _click(driver: Any, xpath: str, what: str) -> None:
    from selenium.webdriver.common.by import By

    def clickable() -> Any:
        found = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed() and e.is_enabled()]
        return found[-1] if found else None

    wait_for(what, clickable, UI_TIMEOUT_S, 0.5, context=lambda: f"url: {driver.current_url}").click()


def _expected_dag_ids() -> set[str]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return set(bag.dag_ids)


def test_ui_login_trigger_ingest_and_see_the_data_quality_alert(airflow_ui: AirflowUI, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    ui, driver = airflow_ui, browser

    # Anonymous: the REST API refuses, the UI sends the browser to the login page.
    assert request_json(f"{ui.url}/api/v2/dags")[0] == 401
    default = {"username": "admin", "password": "admin"}  # pragma: allowlist secret
    assert request_json(f"{ui.url}/auth/token", default)[0] == 401
    driver.get(f"{ui.url}/")
    wait_for(
        "the redirect to the login page",
        lambda: "/auth/login" in driver.current_url,
        UI_TIMEOUT_S,
        0.5,
        context=lambda: driver.current_url,
    )
    _wait_text(driver, ["username and password"], "the login form")
    _shot(driver, "01-login")

    driver.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("admin")
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(ui.password())
    _click(driver, "//button[@type='submit']", "the enabled login button")
    wait_for(
        "the UI after login",
        lambda: "/auth/login" not in driver.current_url,
        UI_TIMEOUT_S,
        0.5,
        context=lambda: _page_text(driver)[:2000],
    )

    # Every recpipe DAG is listed, and none failed to import.
    status, body = request_json(f"{ui.url}/auth/token", {"username": "admin", "password": ui.password()})
    assert status == 201, "the generated password does not log in through the API"
    token = body["access_token"]
    expected = _expected_dag_ids()
    wait_for(
        "the dag-processor to parse every DAG",
        lambda: (
            {d["dag_id"] for d in request_json(f"{ui.url}/api/v2/dags", token=token)[1]["dags"]} >= expected
        ),
        UI_TIMEOUT_S,
        2,
        context=ui.log_tail,
    )
    assert request_json(f"{ui.url}/api/v2/importErrors", token=token)[1]["total_entries"] == 0
    driver.get(f"{ui.url}/dags")
    _wait_text(driver, sorted(expected), "every recpipe DAG in the DAG list")
    _shot(driver, "02-dags")

    # Trigger ingest with its Trigger button, confirm in the dialog, and wait for the run to succeed.
    driver.get(f"{ui.url}/dags/ingest")
    _click(driver, "//button[normalize-space()='Trigger']", "the Trigger button of the ingest DAG")
    _wait_text(driver, ["Trigger Dag"], "the trigger dialog")
    _shot(driver, "03-trigger-dialog")
    _click(driver, "//*[@role='dialog']//button[normalize-space()='Trigger']", "the dialog's Trigger button")

    def finished_run() -> dict | None:
        runs = request_json(f"{ui.url}/api/v2/dags/ingest/dagRuns", token=token)[1]["dag_runs"]
        return next((r for r in runs if r["state"] in ("success", "failed")), None)

    run = wait_for("the triggered ingest run to finish", finished_run, RUN_TIMEOUT_S, 3, context=ui.log_tail)
    tasks = request_json(
        f"{ui.url}/api/v2/dags/ingest/dagRuns/{run['dag_run_id']}/taskInstances", token=token
    )[1]
    states = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
    assert run["state"] == "success", f"{states}\n{ui.log_tail()}"
    assert states == dict.fromkeys(("land_batch", "load_batch", "publish_warehouse", "assign_experiments"), "success")
    assert run["run_type"] == "manual"

    driver.get(f"{ui.url}/dags/ingest/runs/{run['dag_run_id']}")
    _wait_text(driver, ["land_batch", "load_batch", "publish_warehouse"], "the run's tasks")
    _shot(driver, "04-run-success")

    # The failed data-quality check: the quarantine alert in load_batch's task log.
    driver.get(f"{ui.url}/dags/ingest/runs/{run['dag_run_id']}/tasks/load_batch")
    _wait_text(driver, ["ALERT data_quality", "quarantined"], "the data-quality alert in the task log")
    _shot(driver, "05-task-log-data-quality-alert")

    # ... and on the alert landing page, with its own page.
    index = render_alert_pages(load_config(ui.config))
    driver.get(index.as_uri())
    _wait_text(
        driver,
        ["data_quality", "warning", f"dt={ui.day.isoformat()}"],
        "the data-quality alert on the alert landing page",
    )
    _shot(driver, "06-alert-pages")
    # (Alerts of the DAGs that follow daily_metrics may be listed above it: pick the ingest one.)
    _click(
        driver,
        "//tr[@class='alert'][contains(., 'recpipe.load')]//a[contains(@href, 'alert-')]",
        "the quarantine alert's own page",
    )
    _wait_text(driver, ["quarantined_rows", "all alerts"], "the alert's own page")
    _shot(driver, "07-alert-page")

    # The ingest run's Asset event schedules daily_metrics (the real scheduler path): its dbt
    # build rebuilds the announced day. One valid active user survives the quarantine: DAU 1.
    def metrics_run() -> dict | None:
        runs = request_json(f"{ui.url}/api/v2/dags/daily_metrics/dagRuns", token=token)[1]["dag_runs"]
        return next((r for r in runs if r["state"] in ("success", "failed")), None)

    metrics = wait_for("the asset-triggered daily_metrics run", metrics_run, RUN_TIMEOUT_S, 3, context=ui.log_tail)
    assert metrics["state"] == "success", ui.log_tail()
    assert metrics["run_type"] == "asset_triggered"
    warehouse = load_config(ui.config).warehouse_path
    with duckdb.connect(str(warehouse), read_only=True) as con:
        dau = con.execute(
            "select dau from metrics_daily where day = ? and segment = 'all' and experiment_bucket = 'all'",
            [ui.day],
        ).fetchall()
    assert dau == [(1,)]
    driver.get(f"{ui.url}/dags/daily_metrics/runs/{metrics['dag_run_id']}")
    _wait_text(driver, ["resolve_days", "write_report"], "the daily_metrics run's tasks")
    _shot(driver, "08-daily-metrics-run")
