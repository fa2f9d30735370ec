"""The report's retrieval section over hand-written retrieval_eval and model_gate rows."""

from __future__ import annotations

import datetime as dt
import html
import re

import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect_writer
from tasks.reports.page import write_report
from tasks.reports.retrieval import retrieval_section

DAYS = (dt.date(2024, 3, 1), dt.date(2024, 3, 2))
VERSION = "20240302T010000-two-tower"  # shown as its first 15 characters
RECALL_AT_50 = {"popularity": 0.16, "itemcf": 0.20, "two_tower": 0.24}  # latest day, segment all
FAILED = "candidate_recall >= recall_floor: 0.09 < 0.10 <b>"


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
                        rows.append((day, channel, version, segment, k, metric, value, 400, dt.datetime(2024, 3, 3)))
    return pd.DataFrame(rows, columns=["day", "channel", "version", "segment", "k", "metric", "value", "n_users",
                                       "evaluated_at"])


def _gate_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            (DAYS[0], "two_tower", "v1", None, 50, 0.20, None, 0.10, 0.16, 420, True, "", dt.datetime(2024, 3, 2, 1)),
            (DAYS[1], "two_tower", "v2", "v1", 50, 0.09, 0.20, 0.10, 0.16, 431, False, FAILED, dt.datetime(2024, 3, 3, 1)),
        ],
        columns=["day", "model", "candidate", "current", "k", "candidate_recall", "current_recall", "recall_floor",
                 "popularity_recall", "n_users", "passed", "failed_expectations", "checked_at"],
    )


def _write_tables(cfg: PlatformConfig) -> None:
    evals, gate = _eval_rows(), _gate_rows()
    with connect_writer(cfg) as con:
        con.execute(
            "create table retrieval_eval (day date, channel varchar, version varchar, segment varchar, k integer, "
            "metric varchar, value double, n_users bigint, evaluated_at timestamp)"
        )
        con.execute("insert into retrieval_eval select * from evals")
        con.execute(
            "create table model_gate (day date, model varchar, candidate varchar, current varchar, k integer, "
            "candidate_recall double, current_recall double, recall_floor double, popularity_recall double, "
            "n_users bigint, passed boolean, failed_expectations varchar, checked_at timestamp)"
        )
        con.execute("insert into model_gate select * from gate")


def _row(page: str, first_cell: str) -> str:
    match = re.search(rf"<tr>\s*<td>{re.escape(first_cell)}</td>.*?</tr>", page, re.S)
    assert match, first_cell
    return match.group(0)


def test_retrieval_section(platform: PlatformConfig) -> None:
    _write_tables(platform)
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
    assert section.count("data:image/png;base64,") == 3  # per channel, per segment, over days

    page = write_report(platform).read_text()
    assert "<h2>Retrieval</h2>" in page and html.escape(FAILED) in page and page.count("data:image/png") >= 3


def test_retrieval_section_not_built(platform: PlatformConfig) -> None:
    with connect_writer(platform) as con:
        con.execute("create table unrelated (x integer)")
    section = retrieval_section(platform)
    assert "Retrieval evaluation: not built yet" in section and "Evaluation gate: not built yet" in section
    assert "recpipe evaluate --day D" in section and "<img" not in section
    assert "Retrieval evaluation: not built yet" in write_report(platform).read_text()
