"""The retrieval section of the nightly report (docs/METHODS.md "Nightly report"): offline channel metrics and the
nightly evaluation gate, as an HTML fragment.

`retrieval_section(cfg)` reads retrieval_eval and model_gate from the warehouse (read-only). An
evaluation run is a (day, channel, version) scored at one `evaluated_at`; the table may hold several
runs of the same day, and the section uses the latest of each for the latest day. For that day:
every metric at every K per channel and model version (segment all, popularity first, the users
scored, the 95% CI of Recall@K where the rows carry ci_low / ci_high, the lift of Recall@<smallest
K> over popularity), Recall@K and tail recall@K per channel, Recall@<smallest K> per segment; then
the history of every run: Recall@<smallest K> per run (segment all, with its CI where known) and
the last runs as a table; then the last gate decisions, failed ones highlighted. A table not
built yet says so.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from tasks.core.config import ALL, PlatformConfig
from tasks.reports.fragments import (
    FEW_USERS,
    FINAL,
    bar_chart,
    ci_text,
    few_users,
    few_users_note,
    has_ci,
    html_table,
    not_built,
    time_chart,
    warehouse_parts,
)

BASELINE = "popularity"
GATE_ROWS = 14
RUN_ROWS = 20  # runs listed in the history table
METRICS = (("recall", "Recall"), ("ndcg", "NDCG"), ("hit_rate", "HitRate"), ("coverage", "coverage"),
           ("tail_recall", "tail recall"))
EVAL_HINT = ("Retrieval evaluation", "run `recpipe evaluate --day D` or the nightly_training DAG")
GATE_HINT = ("Evaluation gate", "run the nightly_training DAG")
GATE_COLUMNS = ("day", "model", "candidate", "current", "k", "candidate_recall", "current_recall", "recall_floor",
                "popularity_recall", "n_users", "passed", "failed_expectations")
RUN_KEY = ["day", "channel", "version"]
SETTINGS = {"eval_days": "eval days", "train_window_days": "train window days"}  # a run's settings, when stored


def _label(channel: str, version: str) -> str:
    return f"{channel} ({version[:15]})" if version else channel


def latest_runs(ev: pd.DataFrame) -> pd.DataFrame:
    """The rows of the latest run (evaluated_at) of each (day, channel, version)."""
    last = ev.groupby(RUN_KEY).evaluated_at.transform("max")
    return ev[ev.evaluated_at == last]


def _summary(latest: pd.DataFrame, k0: int) -> pd.DataFrame:
    """One row per (channel, version) at segment all, popularity first: the run's settings (when
    stored), each metric at each K (with Recall@K's 95% CI where the rows carry one), the users
    scored, whether they are fewer than evaluation.min_users (when stored), the lift over popularity."""
    rows = latest[latest.segment == ALL].assign(few=few_users)
    key = ["channel", "version"]
    wide = rows.pivot_table(index=key, columns=["k", "metric"], values="value", aggfunc="last")
    columns = {label: rows.groupby(key)[c].max() for c, label in SETTINGS.items() if c in rows}
    recall = rows[rows.metric == "recall"].assign(ci=lambda r: ci_text(r.ci_low, r.ci_high)) if has_ci(rows) else None
    for k in sorted(rows.k.unique()):
        for metric, name in METRICS:
            if (k, metric) in wide:
                columns[f"{name}@{k}"] = wide[(k, metric)]
            if metric == "recall" and recall is not None:
                columns[f"Recall@{k} 95% CI"] = recall[recall.k == k].set_index(key).ci
    table = pd.DataFrame(columns, index=wide.index)
    table["users"] = rows.groupby(key).n_users.max()
    if "below_min_users" in rows:
        table["fewer than min users"] = rows.groupby(key).few.any()
    base = table[f"Recall@{k0}"][table.index.get_level_values("channel") == BASELINE]  # its offline fit ('') first
    lift = table[f"Recall@{k0}"] / (base.iloc[0] if len(base) else float("nan")) - 1
    table[f"Recall@{k0} lift vs {BASELINE}"] = lift.map(lambda v: f"{v:+.1%}" if np.isfinite(v) else "–")
    table = table.reset_index()
    table.insert(0, "channel (version)", [_label(c, v) for c, v in zip(table.channel, table.version)])
    table = pd.concat([table[table.channel == BASELINE], table[table.channel != BASELINE]])
    return table.drop(columns=["channel", "version"])


def _by_channel(rows: pd.DataFrame, order: list[str], day: str) -> str:
    charts = []
    for metric, name in (("recall", "Recall"), ("tail_recall", "tail recall")):
        sub = rows[rows.metric == metric].assign(K=lambda r: "@" + r.k.astype(str),
                                                 order=lambda r: r.label.map(order.index))
        sub = sub.sort_values(["order", "k"])
        charts.append(bar_chart(sub[["label", "K", "value", "n_users"]], "label", "value",
                                f"{name}@K per channel, segment all, {day}", group="K",
                                value_title=name, tooltip=["n_users:Q"]))
    return "".join(charts)


def _by_segment(rows: pd.DataFrame, order: list[str], k0: int, day: str) -> str:
    rows = rows.assign(order=rows.label.map(order.index)).sort_values(["order", "segment"], kind="stable")
    return bar_chart(rows[["segment", "label", "value", "n_users"]], "segment", "value",
                     f"Recall@{k0} per segment, {day}", group="label", value_title=f"Recall@{k0}",
                     tooltip=["n_users:Q"])


def _history(recall: pd.DataFrame, k0: int) -> str:
    """Recall@k0 of every run, segment all: one series per channel, its offline fit and its
    nightly model versions as '<channel> (nightly)'."""
    settings = [c for c in SETTINGS if c in recall]
    points = pd.DataFrame({
        "day": recall.day, "value": recall.value, "version": recall.version, "users": recall.n_users,
        "evaluated_at": recall.evaluated_at, **{c: recall[c] for c in settings},
        "status": few_users(recall).map({False: FINAL, True: FEW_USERS}),
        "series": [c if not v else f"{c} (nightly)" for c, v in zip(recall.channel, recall.version)]})
    if has_ci(recall):
        points = points.assign(low=recall.ci_low, high=recall.ci_high)
    return time_chart(points.sort_values("evaluated_at"),
                      f"Recall@{k0} per evaluation run, segment all (x: last training day)",
                      apart=FEW_USERS, tooltip=["version", "users", "evaluated_at", *settings])


def _runs_table(recall: pd.DataFrame, k0: int) -> str:
    runs = recall.sort_values(["evaluated_at", "day"], ascending=False).head(RUN_ROWS)
    table = pd.DataFrame({"day": runs.day, "evaluated at": runs.evaluated_at,
                          **{label: runs[c] for c, label in SETTINGS.items() if c in runs},
                          "channel": runs.channel, "version": runs.version, "users": runs.n_users,
                          f"Recall@{k0}": runs.value})
    if has_ci(runs):
        table["95% CI"] = ci_text(runs.ci_low, runs.ci_high)
    return (f"<h3>Evaluation runs: the last {len(table)} of {len(recall)}, newest first (Recall@{k0}, segment all;"
            " highlighted: fewer users than evaluation.min_users)</h3>" + html_table(table, few_users(runs)))


def _eval_part(con: duckdb.DuckDBPyConnection) -> str:
    ev = con.execute("select * from retrieval_eval").df()
    if ev.empty:
        return not_built(*EVAL_HINT)
    ev["label"] = [_label(c, v) for c, v in zip(ev.channel, ev.version)]
    current = latest_runs(ev)
    last = current.day.max()
    latest = current[current.day == last]
    day, k0 = f"{last:%Y-%m-%d}", int(latest.k.min())
    table = _summary(latest, k0)
    order = list(table["channel (version)"])
    segments = latest[(latest.metric == "recall") & (latest.k == k0) & (latest.segment != ALL)]
    history = ev[(ev.metric == "recall") & (ev.k == k0) & (ev.segment == ALL)]
    return (
        f"<h3>Offline evaluation, last training day {day} (scored on the clicks of the following day(s);"
        " the latest run of each channel and version)</h3>"
        + few_users_note(latest)
        + html_table(table, table.get("fewer than min users"))
        + _by_channel(latest[latest.segment == ALL], order, day)
        + (_by_segment(segments, order, k0, day) if len(segments) else "")
        + _history(history, k0)
        + _runs_table(history, k0)
    )


def _gate_part(con: duckdb.DuckDBPyConnection) -> str:
    gate = con.execute(f"select * from model_gate order by day desc, checked_at desc limit {GATE_ROWS}").df()
    if gate.empty:
        return not_built(*GATE_HINT)
    table = gate[list(GATE_COLUMNS)].rename(columns=lambda c: c.replace("_", " "))
    return (
        f"<h3>Evaluation gate: last {len(gate)} checks, newest first ({int((~gate.passed).sum())} failed)</h3>"
        + html_table(table, ~gate.passed)
    )


def retrieval_section(cfg: PlatformConfig) -> str:
    """The report's retrieval section: channel metrics and the evaluation gate, or "not built yet" per part."""
    parts = warehouse_parts(cfg, [("retrieval_eval", _eval_part, EVAL_HINT), ("model_gate", _gate_part, GATE_HINT)])
    return "<h2>Retrieval</h2>" + "".join(parts)
