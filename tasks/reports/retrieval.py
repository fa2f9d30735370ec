"""The retrieval section of the nightly report (docs/METHODS.md "Nightly report"): offline channel metrics and the
nightly evaluation gate, as an HTML fragment.

`retrieval_section(cfg)` reads retrieval_eval and model_gate from the warehouse (read-only). For the
latest evaluated day: every metric at every K per channel and model version (segment all, popularity
first, with the lift of Recall@<smallest K> over popularity), Recall@K and tail recall@K per channel,
Recall@<smallest K> per segment and, over several days, per day; then the last gate decisions, failed
ones highlighted. A table not built yet says so.
"""

from __future__ import annotations

import duckdb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tasks.core.config import ALL, PlatformConfig
from tasks.reports.fragments import embed_png, html_table, lines_over_days, not_built, warehouse_parts

BASELINE = "popularity"
GATE_ROWS = 14
METRICS = (("recall", "Recall"), ("ndcg", "NDCG"), ("hit_rate", "HitRate"), ("coverage", "coverage"),
           ("tail_recall", "tail recall"))
EVAL_HINT = ("Retrieval evaluation", "run `recpipe evaluate --day D` or the nightly_training DAG")
GATE_HINT = ("Evaluation gate", "run the nightly_training DAG")
GATE_COLUMNS = ("day", "model", "candidate", "current", "k", "candidate_recall", "current_recall", "recall_floor",
                "popularity_recall", "n_users", "passed", "failed_expectations")


def _label(channel: str, version: str) -> str:
    return f"{channel} ({version[:15]})" if version else channel


def _summary(latest: pd.DataFrame, k0: int) -> pd.DataFrame:
    """One row per (channel, version) at segment all, popularity first: each metric at each K, users, lift."""
    rows = latest[latest.segment == ALL]
    wide = rows.pivot_table(index=["channel", "version"], columns=["k", "metric"], values="value", aggfunc="last")
    table = pd.DataFrame({
        f"{name}@{k}": wide[(k, metric)]
        for k in sorted(rows.k.unique()) for metric, name in METRICS if (k, metric) in wide
    })
    table["users"] = rows.groupby(["channel", "version"]).n_users.max()
    recall = table[f"Recall@{k0}"]
    base = recall[recall.index.get_level_values("channel") == BASELINE]  # its offline fit ('') sorts first
    lift = recall / (base.iloc[0] if len(base) else float("nan")) - 1
    table[f"Recall@{k0} lift vs {BASELINE}"] = lift.map(lambda v: f"{v:+.1%}" if np.isfinite(v) else "–")
    table = table.reset_index()
    table.insert(0, "channel (version)", [_label(c, v) for c, v in zip(table.channel, table.version)])
    table = pd.concat([table[table.channel == BASELINE], table[table.channel != BASELINE]])
    return table.drop(columns=["channel", "version"])


def _by_channel(rows: pd.DataFrame, order: list[str], day: str) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    for ax, (metric, name) in zip(axes, (("recall", "Recall"), ("tail_recall", "tail recall"))):
        wide = rows[rows.metric == metric].pivot_table(index="label", columns="k", values="value", aggfunc="last")
        wide.columns = [f"@{k}" for k in wide.columns]
        wide.reindex(order).plot.bar(ax=ax, rot=20, xlabel="", legend=False,
                                     title=f"{name}@K per channel, segment all, {day}")
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(title="K", fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return embed_png(fig)


def _by_segment(rows: pd.DataFrame, order: list[str], k0: int, day: str) -> str:
    wide = rows.pivot_table(index="segment", columns="label", values="value", aggfunc="last")
    fig, ax = plt.subplots(figsize=(13, 3.8))
    wide[[o for o in order if o in wide]].plot.bar(ax=ax, rot=0, xlabel="", title=f"Recall@{k0} per segment, {day}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return embed_png(fig)


def _over_days(rows: pd.DataFrame, k0: int) -> str:
    """One line per channel: its offline fit, and its nightly model versions as '<channel> (nightly)'."""
    rows = rows.assign(line=[c if not v else f"{c} (nightly)" for c, v in zip(rows.channel, rows.version)])
    wide = rows.sort_values("evaluated_at").pivot_table(index="day", columns="line", values="value", aggfunc="last")
    return lines_over_days(wide, f"Recall@{k0} per channel, segment all", "last training day")


def _eval_part(con: duckdb.DuckDBPyConnection) -> str:
    ev = con.execute("select * from retrieval_eval").df()
    if ev.empty:
        return not_built(*EVAL_HINT)
    ev["label"] = [_label(c, v) for c, v in zip(ev.channel, ev.version)]
    last = ev.day.max()
    latest = ev[ev.day == last]
    day, k0 = f"{last:%Y-%m-%d}", int(latest.k.min())
    table = _summary(latest, k0)
    order = list(table["channel (version)"])
    recall = ev[(ev.metric == "recall") & (ev.k == k0)]
    segments = recall[(recall.day == last) & (recall.segment != ALL)]
    history = recall[recall.segment == ALL]
    return (
        f"<h3>Offline evaluation, last training day {day} (scored on the clicks of the following day(s))</h3>"
        + table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, escape=True)
        + _by_channel(latest[latest.segment == ALL], order, day)
        + (_by_segment(segments, order, k0, day) if len(segments) else "")
        + (_over_days(history, k0) if history.day.nunique() > 1 else "")
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
