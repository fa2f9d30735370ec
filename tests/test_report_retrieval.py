"""The report's retrieval section over hand-written retrieval_eval and model_gate rows: the latest
run's table (with the users scored and, when the rows carry them, Recall@K's CIs), the charts as
Vega-Lite specs whose data equal the rows, and the history of every run."""

from __future__ import annotations

import datetime as dt
import html
import re

import pandas as pd
import pytest

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect_writer
from tasks.experiments.loop import REPORT_LEFT, first_served_day, steps_for_day
from tasks.orchestration.wiring import rewrite_report
from tasks.reports.fragments import CHART, embedded_specs
from tasks.reports.page import write_report
from tasks.reports.retrieval import retrieval_section
from tests.charts import assert_valid_charts

DAYS = (dt.date(2024, 3, 1), dt.date(2024, 3, 2))
VERSION = "20240302T010000-two-tower"  # shown as its first 15 characters
RECALL_AT_50 = {"popularity": 0.16, "itemcf": 0.20, "two_tower": 0.24}  # latest day, segment all
FAILED = "candidate_recall >= recall_floor: 0.09 < 0.10 <b>"
RERUN = 0.26  # two_tower's Recall@50 in a later run of the latest day
EVALUATED = dt.datetime(2024, 3, 3)


def _eval_rows() -> pd.DataFrame:
    rows = []
    for day in DAYS:
        for channel, recall in RECALL_AT_50.items():
            version = VERSION if channel == "two_tower" else ""
            for segment in ("all", "low_activity", "heavy"):
                for k in (50, 100):
                    for metric in ("recall", "ndcg", "hit_rate", "coverage", "tail_recall"):
                        value = recall if metric == "recall" and k == 50 else 0.3 + k / 1000
                        value = value if day == DAYS[-1] and segment == "all" else value / 2
                        rows.append((day, channel, version, segment, k, metric, value, 400, EVALUATED))
    return pd.DataFrame(rows, columns=["day", "channel", "version", "segment", "k", "metric", "value", "n_users",
                                       "evaluated_at"])


def _with_ci_and_a_rerun(evals: pd.DataFrame) -> pd.DataFrame:
    """CIs of +-0.05 on every row, and a later run of the latest day's two_tower (Recall@50 RERUN, 390
    users: fewer than evaluation.min_users, say)."""
    evals = evals.assign(ci_low=evals.value - 0.05, ci_high=evals.value + 0.05)
    rerun = evals[(evals.day == DAYS[-1]) & (evals.channel == "two_tower")].copy()
    recall = (rerun.metric == "recall") & (rerun.k == 50) & (rerun.segment == "all")
    rerun.loc[recall, ["value", "ci_low", "ci_high"]] = [RERUN, RERUN - 0.05, RERUN + 0.05]
    rerun = rerun.assign(n_users=390, evaluated_at=EVALUATED + dt.timedelta(hours=5))
    return pd.concat([evals, rerun]).assign(below_min_users=lambda r: r.n_users < 400)


def _gate_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            (DAYS[0], "two_tower", "v1", None, 50, 0.20, None, 0.10, 0.16, 420, True, "", dt.datetime(2024, 3, 2, 1)),
            (DAYS[1], "two_tower", "v2", "v1", 50, 0.09, 0.20, 0.10, 0.16, 431, False, FAILED, dt.datetime(2024, 3, 3, 1)),
        ],
        columns=["day", "model", "candidate", "current", "k", "candidate_recall", "current_recall", "recall_floor",
                 "popularity_recall", "n_users", "passed", "failed_expectations", "checked_at"],
    )


def _write_tables(cfg: PlatformConfig, evals: pd.DataFrame) -> None:
    ci = ", ci_low double, ci_high double, below_min_users boolean" if "ci_low" in evals else ""
    with connect_writer(cfg) as con:
        con.execute(
            "create table retrieval_eval (day date, channel varchar, version varchar, segment varchar, k integer, "
            f"metric varchar, value double, n_users bigint, evaluated_at timestamp{ci})"
        )
        con.execute("insert into retrieval_eval select * from evals")
        con.execute(
            "create table model_gate (day date, model varchar, candidate varchar, current varchar, k integer, "
            "candidate_recall double, current_recall double, recall_floor double, popularity_recall double, "
            "n_users bigint, passed boolean, failed_expectations varchar, checked_at timestamp)"
        )
        con.register("gate_rows", _gate_rows())
        con.execute("insert into model_gate select * from gate_rows")


def _row(page: str, first_cell: str) -> str:
    match = re.search(rf"<tr>\s*<td>{re.escape(first_cell)}</td>.*?</tr>", page, re.S)
    assert match, first_cell
    return match.group(0)


def _params(spec: object) -> dict[str, dict]:
    """Every selection parameter of a spec, by name."""
    found = {}
    if isinstance(spec, dict):
        found |= {p["name"]: p for p in spec.get("params", []) if "select" in p}
        for value in spec.values():
            found |= _params(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= _params(value)
    return found


def test_retrieval_section(platform: PlatformConfig) -> None:
    _write_tables(platform, _eval_rows())
    section = retrieval_section(platform)

    assert section.startswith("<h2>Retrieval</h2>")
    labels = ["popularity", "itemcf", f"two_tower ({VERSION[:15]})"]
    rows = [_row(section, label) for label in labels]
    assert section.index(rows[0]) < section.index(rows[1]) < section.index(rows[2])  # popularity first
    lift = RECALL_AT_50["two_tower"] / RECALL_AT_50["popularity"] - 1  # 0.24 / 0.16 - 1 = +50.0%
    assert f"<td>{lift:+.1%}</td>" in rows[2] and "<td>+0.0%</td>" in rows[0]
    assert "Recall@50 lift vs popularity" in section and "tail recall@100" in section
    failed = re.search(r'<tr class="warn">.*?</tr>', section, re.S)
    assert failed and html.escape(FAILED) in failed.group(0) and FAILED not in section
    assert section.count('<tr class="warn">') == 1
    assert "95% CI" not in section  # rows without ci_low / ci_high: no CI column, no failure

    specs = embedded_specs(section)  # recall and tail recall per channel, per segment, the runs' history
    assert section.count(CHART) == len(specs) == 4
    by_channel = {(v["label"], v["K"]): v["value"] for v in specs[0]["data"]["values"]}
    assert by_channel[(labels[2], "@50")] == RECALL_AT_50["two_tower"] and by_channel[("itemcf", "@100")] == 0.4
    history = specs[3]
    expected = _eval_rows().query("metric == 'recall' and k == 50 and segment == 'all'")  # every run, both days
    got = {(v["day"][:10], v["series"]): v["value"] for v in history["data"]["values"]}
    assert got == pytest.approx({
        (f"{r.day}", r.channel + (" (nightly)" if r.version else "")): r.value for r in expected.itertuples()})
    params = _params(history)
    assert params["range"]["select"]["type"] == "interval" and params["range"]["value"]["x"]  # the range selector
    assert any(p.get("bind") == "scales" for p in params.values())  # zoom / pan
    assert "Evaluation runs: the last 6 of 6, newest first" in section

    page = write_report(platform).read_text()
    assert "<h2>Retrieval</h2>" in page and html.escape(FAILED) in page and len(assert_valid_charts(page)) >= 4
    assert page.count("window.vegaEmbed=") == 1 and "cdn.jsdelivr" not in page  # the JS inlined once: offline


def test_the_latest_run_with_its_ci_and_every_run_in_the_history(platform: PlatformConfig) -> None:
    evals = _with_ci_and_a_rerun(_eval_rows())
    _write_tables(platform, evals)
    section = retrieval_section(platform)

    two_tower = re.search(rf'<tr class="warn"><td>{re.escape(f"two_tower ({VERSION[:15]})")}</td>.*?</tr>', section)
    assert two_tower, "the later run of the latest day, highlighted: fewer users than evaluation.min_users"
    two_tower = two_tower.group(0)
    assert f"<td>{RERUN:.4g}</td>" in two_tower and f"<td>[{RERUN - 0.05:.4g}, {RERUN + 0.05:.4g}]</td>" in two_tower
    assert "<td>390</td>" in two_tower and "Recall@50 95% CI" in section and "Recall@100 95% CI" in section
    history = embedded_specs(section)[3]["data"]["values"]
    runs = [v for v in history if v["series"] == "two_tower (nightly)" and v["day"].startswith(f"{DAYS[-1]}")]
    assert sorted(v["value"] for v in runs) == [RECALL_AT_50["two_tower"], RERUN]  # both runs of the day kept
    assert all(v["high"] - v["low"] == pytest.approx(0.1) for v in history)
    assert "Evaluation runs: the last 7 of 7, newest first" in section
    assert "Fewer users scored than evaluation.min_users in 3 group(s): " in section  # all, low_activity, heavy
    assert {v["status"] for v in runs} == {"final", "fewer users than evaluation.min_users"}


def test_retrieval_section_not_built(platform: PlatformConfig) -> None:
    with connect_writer(platform) as con:
        con.execute("create table unrelated (x integer)")
    section = retrieval_section(platform)
    assert "Retrieval evaluation: not built yet" in section and "Evaluation gate: not built yet" in section
    assert "recpipe evaluate --day D" in section and CHART not in section
    assert "Retrieval evaluation: not built yet" in write_report(platform).read_text()


def test_a_run_with_report_false_leaves_the_report_to_a_later_dag(platform: PlatformConfig) -> None:
    """The report task of a DAG run whose conf says report: false (the closed loop's DAGs before the
    day's last) writes nothing; without it, or with report: true, it writes the page."""
    with connect_writer(platform) as con:
        con.execute("create table unrelated (x integer)")
    page = platform.reports_dir / "metrics" / "index.html"
    assert "not rewritten" in rewrite_report(platform, {"day": "2026-01-08", "report": False}) and not page.exists()
    assert rewrite_report(platform, {"day": "2026-01-08", "report": True}) == str(page) and page.exists()
    page.unlink()
    assert rewrite_report(platform, None) == str(page) and page.exists()
    left = [s.dag_id for s in steps_for_day(platform, first_served_day(platform)) if s.conf.get("report") is False]
    assert left == list(REPORT_LEFT) and "nightly_training" not in left  # the day's last DAG with a report writes it
