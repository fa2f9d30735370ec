"""The report's ranking section over hand-written ranking_eval, distillation_gate,
distillation_predictions and fault_drill rows and two registered pre-ranking versions."""

from __future__ import annotations

import datetime as dt
import html
import json
import re

import pandas as pd
import pytest

from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig
from tasks.core.warehouse import connect_writer
from tasks.reports.fragments import CHART, embedded_specs
from tasks.reports.page import write_report
from tasks.reports.ranking import ranking_section
from tests.charts import assert_valid_charts

DAYS = (dt.date(2024, 3, 1), dt.date(2024, 3, 2))
FAILED = 'distillation_slices: ratio of "like" between 0.5 and 2.0: 3 <b>'
DRILL_FAILED = "distillation_rows: p_click not null (drill)"
DOCS = "/srv/gx/uncommitted/data_docs/local_site/index.html"
P_CLICK, Y_CLICK = (0.2, 0.1, 0.4, 0.3), (1, 0, 0, 1)  # the latest distillation set's click head


def _eval_rows() -> pd.DataFrame:
    rows = []
    for day in DAYS:
        for head in RANKING_HEADS:
            for segment in ("all", "low_activity"):
                mean, observed = 0.1, 0.1  # calibration 1
                if day == DAYS[1] and segment == "all" and head in ("click", "like"):
                    mean, observed = (0.12, 0.08) if head == "click" else (0.3, 0.1)  # 1.5, and 3 (out of band)
                rows.append((day, "full_ranking", f"v{day.day}", head, segment, 500, 50, 0.7, mean, observed,
                             dt.datetime(2024, 3, 3)))
    return pd.DataFrame(rows, columns=["day", "model", "version", "head", "segment", "n", "positives", "auc",
                                       "mean_prediction", "observed_rate", "evaluated_at"])


def _gate_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            (DAYS[0], "v1", True, "[]", DOCS, dt.datetime(2024, 3, 2, 1)),
            (DAYS[1], "v2", False, json.dumps([FAILED]), DOCS, dt.datetime(2024, 3, 3, 1)),
            (DAYS[1], "drill:nan_5pct:v2", False, json.dumps([DRILL_FAILED]), DOCS, dt.datetime(2024, 3, 3, 2)),
        ],
        columns=["day", "version", "passed", "failed_expectations", "data_docs", "checked_at"],
    )


def _prediction_rows() -> pd.DataFrame:
    rows = pd.DataFrame({"day": DAYS[1], "version": "v2", "user_id": range(4), "item_id": range(4)})
    for head in RANKING_HEADS:
        rows[f"p_{head}"] = P_CLICK if head == "click" else 0.5
    for head in RANKING_HEADS:
        rows[f"y_{head}"] = Y_CLICK if head == "click" else 1
    rows["fault"] = "none"
    return rows


def _drill_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            (DAYS[1], "none", "v2", False, "", 0.70, 0.70, 0.66),
            (DAYS[1], "scaled_x3", "v2", True, "distillation_slices: calibration", 0.66, 0.61, 0.66),
            (DAYS[1], "nan_5pct", "v2", False, "", 0.69, 0.69, 0.66),  # missed: highlighted
        ],
        columns=["day", "fault", "scorer", "caught", "failed_expectations", "auc_gated", "auc_ungated", "auc_label_only"],
    )


def _group_rows() -> pd.DataFrame:
    """The calibrator halves the click calibration error of its segment; the residual worsens like."""
    return pd.DataFrame(
        [(DAYS[1], "click", "female_18_24", "full", 0.086, 0.85, 0.665, 550, 60),
         (DAYS[1], "click", "female_18_24", "full+calibrator", 0.043, 0.95, 0.674, 550, 60),
         (DAYS[1], "like", "new_users", "full", 0.030, 0.52, 0.628, 348, 40),
         (DAYS[1], "like", "new_users", "full+residual", 0.042, 0.67, 0.647, 348, 40)],
        columns=["day", "head", "segment", "model", "ece", "ratio", "auc", "n", "positives"],
    )


def _write_tables(cfg: PlatformConfig) -> None:
    frames = {"ranking_eval": _eval_rows(), "distillation_gate": _gate_rows(),
              "distillation_predictions": _prediction_rows(), "fault_drill": _drill_rows(),
              "special_groups_eval": _group_rows()}
    with connect_writer(cfg) as con:
        for table, rows in frames.items():
            con.register("rows", rows)
            con.execute(f"create table {table} as select * from rows")


def _publish_prerankers(cfg: PlatformConfig) -> None:
    store = registry.model_store(cfg, "preranking")
    for day, supervision in zip(DAYS, ("distilled", "label_only")):
        meta = {"training_window": f"{day}..{day}", "supervision": supervision, "examples": 1000}
        artifacts.publish(store, lambda folder: {}, meta)


def _part(section: str, title: str) -> str:
    match = re.search(rf"<h3>{re.escape(title)}.*?(?=<h3>|$)", section, re.S)
    assert match, title
    return match.group(0)


def _row(part: str, *cells: str) -> str:
    match = re.search(r'<tr( class="warn")?>' + "".join(rf"<td>{re.escape(c)}</td>" for c in cells) + ".*?</tr>", part)
    assert match, cells
    return match.group(0)


def test_ranking_section(platform: PlatformConfig) -> None:
    _write_tables(platform)
    _publish_prerankers(platform)
    section = ranking_section(platform)

    assert section.startswith("<h2>Ranking</h2>") and "not built yet" not in section
    evaluation = _part(section, "Full ranker")
    assert all(f"<td>{head}</td><td>all</td>" in evaluation for head in RANKING_HEADS)
    click = _row(evaluation, "click", "all")
    assert f"<td>{0.12 / 0.08:.4g}</td>" in click and 'class="warn"' not in click  # calibration 1.5, in the band
    assert 'class="warn"' in _row(evaluation, "like", "all")  # 0.3 / 0.1 = 3 > 2.0

    gate = _part(section, "Distillation gate")
    failed = _row(gate, f"{DAYS[1]}", "v2")
    assert 'class="warn"' in failed and html.escape(FAILED) in failed and FAILED not in section
    assert f'<a href="file://{DOCS}">data docs</a>' in failed
    assert "drill:" not in gate and DRILL_FAILED not in gate and gate.count('<tr class="warn">') == 1

    p, y = sum(P_CLICK) / 4, sum(Y_CLICK) / 4  # 0.25 vs 0.5
    assert _row(_part(section, "Distillation set"), "click", "2", f"{p:.4g}", f"{y:.4g}", "0", f"{p / y:.4g}")

    drill = _part(section, "Fault drill")
    assert 'class="warn"' in _row(drill, "nan_5pct", "False") and 'class="warn"' not in _row(drill, "none", "False")
    assert "distillation_slices: calibration" in _row(drill, "scaled_x3", "True")

    groups = _part(section, "Special user groups")
    calibrated = _row(groups, "female_18_24", "click")  # auc, auc, ece full 0.086 -> calibrator 0.043
    assert "<td>0.086</td>" in calibrated and "<td>0.043</td>" in calibrated and 'class="warn"' not in calibrated
    assert 'class="warn"' in _row(groups, "new_users", "like")  # 0.030 -> 0.042: worse after

    versions = _part(section, "Pre-ranking versions")
    assert versions.index("label_only") < versions.index("distilled")  # newest first
    warn = re.findall(r'<tr class="warn">.*?</tr>', versions)
    assert len(warn) == 1 and "<td>True</td>" in warn[0] and "<td>label_only</td>" in warn[0]  # current
    auc, calibration, drill_chart = embedded_specs(section)  # AUC and calibration over days, fault drill
    assert section.count(CHART) == 3
    overall = _eval_rows().query("segment == 'all'")
    assert {(v["day"][:10], v["series"]): v["value"] for v in auc["data"]["values"]} == {
        (f"{r.day}", r.head): r.auc for r in overall.itertuples()}
    assert {(v["day"][:10], v["series"]): v["value"] for v in calibration["data"]["values"]} == pytest.approx({
        (f"{r.day}", r.head): r.mean_prediction / r.observed_rate for r in overall.itertuples()})
    band = platform.ranking.gate.calibration_band
    assert {"low": band[0], "high": band[1]} in [layer.get("data", {}).get("values", [None])[0]
                                                 for layer in calibration["vconcat"][0]["layer"]]  # the gate band
    bars = {(v["fault"], v["model"]): v["auc"] for v in drill_chart["data"]["values"]}
    assert bars == {(r.fault, m): getattr(r, f"auc_{m}")
                    for r in _drill_rows().itertuples() for m in ("gated", "ungated")}
    assert {"datum": 0.70} in [layer["encoding"].get("y") for layer in drill_chart["layer"]]  # the clean AUC line

    page = write_report(platform).read_text()
    assert "<h2>Ranking</h2>" in page and html.escape(FAILED) in page and len(assert_valid_charts(page)) >= 3


def test_ranking_section_not_built(platform: PlatformConfig) -> None:
    with connect_writer(platform) as con:
        con.execute("create table unrelated (x integer)")
    section = ranking_section(platform)
    for what in ("Full-ranking evaluation", "Distillation gate", "Distillation set", "Fault drill",
                 "Special user groups", "Pre-ranking versions"):
        assert f"{what}: not built yet" in section
    assert "recpipe train --day D" in section and "recpipe fault-drill --day D" in section and CHART not in section
    assert "Full-ranking evaluation: not built yet" in write_report(platform).read_text()
