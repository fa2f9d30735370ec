"""The closed loop end to end (docs/METHODS.md "Closed loop"): `recpipe experiment run` drives the
real DAGs one simulated day at a time, the simulator is served by the recommendation path with each
arm's strategy, and a crash in the middle of a day resumes without a repeated or missing day. The
resumed run is the README's main job, `recpipe demo` (the config's first experiment, quiet, its
readout at the end); DAU is recomputed from the lake's Parquet files, and one day rebuilt with the
real `airflow dags test daily_metrics` changes nothing."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from tasks.reports.fragments import CHART
from tests.conftest import write_config
from tests.live import airflow_subprocess_env

MARTS = ("metrics_daily", "retention_daily", "ab_readout", "experiment_readout")

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DAGS = Path(__file__).resolve().parent.parent / "dags"
START = dt.date(2026, 1, 1)
ORGANIC_DAYS = 2
SERVED_DAYS = 1
FIRST_SERVED = START + dt.timedelta(days=ORGANIC_DAYS)
LAST = FIRST_SERVED + dt.timedelta(days=SERVED_DAYS - 1)
ARMS = {"control": {}, "none": {"exploration": {"share": 0.0}}, "more": {"exploration": {"share": 0.2}}}
CRASH_AFTER = f"content_pools@{FIRST_SERVED.isoformat()}:{FIRST_SERVED.isoformat()}"


def _env(tmp: Path) -> tuple[dict[str, str], Path]:
    data = tmp / "data"
    cfg_path = write_config(tmp / "recpipe.yaml", data,
                            simulator={"exposure_policy": "recpipe", "organic_days": ORGANIC_DAYS},
                            airflow={"dbt_tasks": "per_dag"})  # as config/demo.yaml
    raw = yaml.safe_load(cfg_path.read_text())
    raw["experiments"] = [{"name": "explore", "start": FIRST_SERVED.isoformat(), "arms": ARMS}]
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return airflow_subprocess_env(tmp / "airflow", cfg_path), data


def _run_until_crash(env: dict[str, str], progress: Path) -> None:
    """Start the loop and kill it (SIGKILL, the whole process group) once CRASH_AFTER is recorded."""
    cmd = [str(BIN / "recpipe"), "experiment", "run", "explore", "--days", str(SERVED_DAYS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists() and CRASH_AFTER in json.loads(progress.read_text() or "{}"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the loop ended before the planned crash"


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("closed-loop")
    env, data = _env(tmp)
    progress = data / "closed_loop" / "progress.json"
    _run_until_crash(env, progress)
    resumed = subprocess.run([str(BIN / "recpipe"), "demo", "--days", str(SERVED_DAYS)],
                             check=False, env=env, capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-5000:]
    return data, resumed, env


def _events(data: Path) -> pd.DataFrame:
    return ds.dataset(data / "lake" / "events", format="parquet", partitioning="hive").to_table().to_pandas()


def test_a_crash_mid_day_resumes_without_a_repeated_or_missing_day(loop) -> None:
    data, resumed, _ = loop
    events = _events(data)
    days = sorted(pd.to_datetime(events.ts).dt.date.unique())
    assert days == [START + dt.timedelta(days=i) for i in range((LAST - START).days + 1)]
    assert events.event_id.is_unique
    # One batch per day in the lake (a re-run replaces its own batch, never adds a second one).
    for day in days:
        assert len(list((data / "lake" / "events" / f"dt={day}").glob("*.parquet"))) == 1
    progress = json.loads((data / "closed_loop" / "progress.json").read_text())
    assert CRASH_AFTER in progress  # done once (a small world's pool may be rejected by its gate: recorded)
    assert all(f"{d}@{LAST}:{LAST}" in progress for d in ("ingest", "ann_refresh"))
    # The resumed run only did what was left: the rest of the crashed day's chain.
    lines = [ln for ln in resumed.stdout.splitlines() if re.match(r"\d{4}-\d\d-\d\d \[", ln)]  # one per day
    assert [ln[:10] for ln in lines] == [FIRST_SERVED.isoformat()], resumed.stdout
    assert "ingest" not in lines[0] and "pools" not in lines[0] and "training" in lines[0], lines[0]
    # The warehouse holds every day once.
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        per_day = con.execute("select dt, count(*) = count(distinct event_id) from raw.events group by 1").fetchall()
    assert len(per_day) == len(days) and all(unique for _, unique in per_day)


def test_served_days_follow_each_users_arm(loop) -> None:
    data, _, _ = loop
    events = _events(data)
    events["day"] = pd.to_datetime(events.ts).dt.date
    imps = events[events.event_type == "impression"]
    organic, served = imps[imps.day < FIRST_SERVED], imps[imps.day >= FIRST_SERVED]
    assert organic.strategy.isna().all() and organic.channel.isna().all()
    assert served.strategy.notna().all() and served.channel.notna().all()
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        arms = con.execute("select user_id, arm from experiment_assignments where experiment = 'explore'").df()
    assert set(arms.arm) == set(ARMS)
    merged = served.merge(arms, on="user_id", how="left")
    assert merged.arm.notna().all()  # traffic 1.0: every served user is in the experiment
    assert (merged.strategy == "explore=" + merged.arm).all()
    # The arms differ as configured: no exploration slot in `none`, most in `more`.
    from_feed = merged[merged.channel != "organic_fill"]
    share = (from_feed.channel == "exploration").groupby(from_feed.arm).mean()
    assert share["none"] == 0.0
    assert share["more"] > share["control"] > 0.0


def test_the_served_nights_gate_compares_with_popularity_on_the_clicks_no_model_chose(loop) -> None:
    """The night of the served day scores popularity on the clicks of impressions no model chose
    (channel organic_fill or the exploration pool; any click of the user on the item through a
    served impression counts as chosen), over the users who have one: recomputed from the lake."""
    data, _, _ = loop
    events = _events(data)
    events["day"] = pd.to_datetime(events.ts).dt.date
    items = ds.dataset(data / "lake" / "items", format="parquet", partitioning="hive").to_table().to_pandas()
    catalogue = set(items.item_id[pd.to_datetime(items.publish_ts).dt.date < LAST])
    clicks = events[(events.event_type == "click") & (events.day == LAST) & events.item_id.isin(catalogue)]
    unchosen = clicks.channel.isin(["organic_fill", "exploration"])
    chosen_pairs = set(zip(clicks.user_id[~unchosen], clicks.item_id[~unchosen]))
    kept = clicks[unchosen & ~pd.Series(list(zip(clicks.user_id, clicks.item_id)), index=clicks.index).isin(chosen_pairs)]
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("select channel, version, value, n_users from retrieval_eval where metric = 'recall_unchosen' "
                           "and day = ?", [LAST - dt.timedelta(days=1)]).df()
    assert kept.user_id.nunique() > 0, "the `more` arm's exploration slots give clicks no model chose"
    popularity = rows[rows.channel == "popularity"]
    assert len(popularity) == 1 and popularity.n_users.iloc[0] == kept.user_id.nunique()
    assert (rows.n_users == kept.user_id.nunique()).all() and rows.value.between(0, 1).all()


def test_the_readout_of_the_served_day_matches_the_lake(loop) -> None:
    """DAU per arm = users active on the served day / users assigned (signed up by then), from the
    lake's Parquet and the assignments; and `recpipe experiment readout` prints every arm."""
    data, _, env = loop
    events = _events(data)
    active = set(events.user_id[pd.to_datetime(events.ts).dt.date == FIRST_SERVED])
    users = ds.dataset(data / "lake" / "users", format="parquet", partitioning="hive").to_table().to_pandas()
    signed_up = set(users.user_id[pd.to_datetime(users.signup_ts).dt.date <= LAST])
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        arms = con.execute("select user_id, arm from experiment_assignments where experiment = 'explore'").df()
        readout = con.execute("select arm, control_value, arm_value, n_control, n_arm from experiment_readout "
                              "where experiment = 'explore' and metric = 'dau'").df().set_index("arm")
    arms = arms[arms.user_id.isin(signed_up)]
    dau = arms.assign(active=arms.user_id.isin(active)).groupby("arm").active.agg(["mean", "size"])
    assert set(readout.index) == {"none", "more"}
    for arm, row in readout.iterrows():
        assert row.arm_value == pytest.approx(dau.loc[arm, "mean"], rel=1e-12) and row.n_arm == dau.loc[arm, "size"]
        assert row.control_value == pytest.approx(dau.loc["control", "mean"], rel=1e-12)
    printed = subprocess.run([str(BIN / "recpipe"), "experiment", "readout", "explore"], env=env, capture_output=True,
                             text=True, check=False, timeout=300)
    assert printed.returncode == 0, printed.stderr[-2000:]
    rows = {tuple(line.split()[:2]) for line in printed.stdout.splitlines()[1:]}
    assert {("dau", "none"), ("dau", "more"), ("clicks", "more")} <= rows, printed.stdout


def test_the_readout_puts_each_arms_dau_beside_the_ground_truth(loop) -> None:
    """On simulated data `recpipe experiment readout` adds each arm's expected DAU from the
    simulator's latent return probabilities. An arm's measured DAU is the mean of its users'
    Bernoulli activity, so it lies within 4 standard errors of that expectation."""
    data, _, env = loop
    printed = subprocess.run([str(BIN / "recpipe"), "experiment", "readout", "explore"], env=env, capture_output=True,
                             text=True, check=False, timeout=300)
    assert printed.returncode == 0, printed.stderr[-2000:]
    lines = printed.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("DAU against the simulator's ground truth"))
    truth = pd.read_csv(io.StringIO("\n".join(lines[at + 1:])), sep=r"\s+").set_index("arm")
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        readout = con.execute("select arm, diff, ci_low, ci_high, control_value, arm_value, n_control, n_arm "
                              "from experiment_readout where experiment = 'explore' and metric = 'dau'").df()
    assert set(truth.index) == set(readout.arm) == {"none", "more"}
    for row in readout.itertuples():
        t = truth.loc[row.arm]
        assert (t["diff"], t.ci_low, t.ci_high) == pytest.approx((row.diff, row.ci_low, row.ci_high), abs=1e-4)
        assert t.true_diff == pytest.approx(t.true_arm - t.true_control, abs=2e-4)
        assert t.covers == (t.ci_low <= t.true_diff <= t.ci_high)
        for measured, expected, n in ((row.arm_value, t.true_arm, row.n_arm), (row.control_value, t.true_control,
                                                                                row.n_control)):
            assert 0 < expected < 1 and abs(measured - expected) <= 4 * math.sqrt(expected * (1 - expected) / n)


def _marts(warehouse: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {t: con.execute(f"select * from {t} order by all").df() for t in MARTS}


def test_the_demo_is_quiet_and_ends_with_the_readout(loop) -> None:
    data, resumed, _ = loop
    out = resumed.stdout.splitlines()
    # One line per simulated day and a closing summary; the Airflow, dbt and task logs are in the file.
    logged = [ln for ln in out if re.search(r" (INFO|WARNING|ERROR) |\[(info|warning|error) ", ln)]
    assert len(out) < 150 and not logged, resumed.stdout
    log = data / "closed_loop" / "loop.log"
    assert f"full logs: {log}" in resumed.stdout and "dag_id=daily_metrics" in log.read_text()
    table = out[out.index(next(ln for ln in out if ln.startswith("experiment explore"))) + 1:]
    arms = {tuple(ln.split()[:2]) for ln in table[1:] if ln.strip()}
    assert {("dau", "none"), ("dau", "more"), ("clicks", "more")} <= arms, resumed.stdout


def test_dau_per_day_matches_the_lake(loop) -> None:
    data, _, _ = loop
    events = _events(data)
    events["day"] = pd.to_datetime(events.ts).dt.date
    expected = events.groupby("day").user_id.nunique()
    metrics = _marts(data / "warehouse.duckdb")["metrics_daily"].query("segment == 'all' and experiment_bucket == 'all'")
    assert list(metrics.day.dt.date) == list(expected.index) == [START + dt.timedelta(d) for d in range(len(expected))]
    assert metrics.dau.tolist() == expected.tolist()
    assert (data / "reports" / "metrics" / "index.html").read_text().count(CHART) >= 3


def test_rebuilding_one_day_with_dags_test_changes_nothing(loop) -> None:
    data, _, env = loop
    before = _marts(data / "warehouse.duckdb")
    # A DAG folder holding daily_metrics' file alone (a link to dags/daily_metrics.py): `airflow
    # dags test` parses its folder twice, and the other DAGs' files are not under test here.
    folder = data.parent / "dags-daily-metrics"
    folder.mkdir()
    (folder / "daily_metrics.py").symlink_to(DAGS / "daily_metrics.py")
    run = subprocess.run([str(BIN / "airflow"), "dags", "test", "daily_metrics", FIRST_SERVED.isoformat()],
                         env=env | {"AIRFLOW__CORE__DAGS_FOLDER": str(folder)},
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    after = _marts(data / "warehouse.duckdb")
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], check_exact=False, rtol=1e-12)
