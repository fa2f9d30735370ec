"""The ranking section of the nightly report (docs/METHODS.md "Nightly report"): the full ranker's evaluation, the
distillation gate, the distillation set, the fault drill and the pre-ranker's versions, as an HTML
fragment.

`ranking_section(cfg)` reads ranking_eval, distillation_gate, distillation_predictions,
fault_drill and special_groups_eval from the warehouse (read-only) and the pre-ranking versions from the model registry:
AUC per head over days (segment all); for the latest day AUC and calibration (mean prediction /
observed rate) per head and segment; the calibration ratio per head over days against
ranking.gate.calibration_band; the last gate checks (drills excluded; failed ones highlighted with
their expectations and data docs); the latest distillation set's mean prediction vs observed rate
per head; the latest fault drill (caught? pre-ranking AUC gated vs ungated); the last pre-ranking
versions, distilled or label-only; the special user groups' calibration before and after their
small models (special_groups_eval). Rows out of the band, failed checks, missed faults and
label-only versions are highlighted; a table not built yet says so.
"""

from __future__ import annotations

import functools
import html
import json
import urllib.parse
from collections.abc import Callable

import duckdb
import pandas as pd

from tasks.core import artifacts, registry
from tasks.core.config import ALL, FAULTS, RANKING_HEADS, PlatformConfig
from tasks.reports.fragments import bar_chart, html_table, latest_day, not_built, time_chart, warehouse_parts

ROWS = 14
PRERANKING = "preranking"
TRAIN = "run the nightly_training DAG: `recpipe train --day D`"
EVAL_HINT = ("Full-ranking evaluation", TRAIN)
GATE_HINT = ("Distillation gate", TRAIN)
PREDICTIONS_HINT = ("Distillation set", TRAIN)
DRILL_HINT = ("Fault drill", "run `recpipe fault-drill --day D`")
VERSIONS_HINT = ("Pre-ranking versions", TRAIN)
GROUPS_HINT = ("Special user groups", "run `recpipe special-groups --day D`")


def _off_band(cfg: PlatformConfig, ratio: pd.Series, positives: pd.Series) -> pd.Series:
    """Slices the gate judges (enough positives) whose calibration ratio is outside its band."""
    gate = cfg.ranking.gate
    low, high = gate.calibration_band
    return (positives >= gate.calibration_min_positives) & ~ratio.between(low, high)


def _eval_part(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig) -> str:
    ev = con.execute("select * from ranking_eval order by evaluated_at").df()
    if ev.empty:
        return not_built(*EVAL_HINT)
    ev = ev.drop_duplicates(["day", "head", "segment"], keep="last")  # a day evaluated twice: its last version
    ev["calibration"] = ev.mean_prediction / ev.observed_rate.where(ev.observed_rate > 0)
    heads = [h for h in RANKING_HEADS if h in set(ev["head"])]
    last = ev.day.max()
    latest = ev[ev.day == last].assign(order=lambda d: d["head"].map(heads.index), first=lambda d: d.segment != ALL)
    latest = latest.sort_values(["order", "first", "segment"])
    table = latest[["head", "segment", "version", "n", "positives", "auc", "mean_prediction", "observed_rate",
                    "calibration"]].rename(columns=lambda c: c.replace("_", " ")).rename(columns={"auc": "AUC"})
    overall = ev[ev.segment == ALL]
    points = pd.DataFrame({"day": overall.day, "series": overall["head"], "version": overall.version,
                           "n": overall.n, "positives": overall.positives})
    band = cfg.ranking.gate.calibration_band
    return (
        f"<h3>Full ranker, evaluated on {last:%Y-%m-%d} (calibration = mean prediction / observed rate;"
        f" highlighted: outside the gate band [{band[0]:g}, {band[1]:g}] with at least"
        f" {cfg.ranking.gate.calibration_min_positives} positives)</h3>"
        + html_table(table, _off_band(cfg, latest.calibration, latest.positives))
        + time_chart(points.assign(value=overall.auc), "AUC per head, segment all (x: evaluated day)",
                     tooltip=["version", "n", "positives"])
        + time_chart(points.assign(value=overall.calibration), "Calibration (mean prediction / observed "
                     f"rate) per head, segment all; green: the gate band [{band[0]:g}, {band[1]:g}]",
                     band=band, tooltip=["version", "n", "positives"])
    )


def _docs_link(path: str | None) -> str:
    return f'<a href="{html.escape("file://" + urllib.parse.quote(path))}">data docs</a>' if path else "–"


def _gate_part(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig) -> str:
    gate = con.execute(
        "select * from distillation_gate where not starts_with(version, 'drill:') "
        f"order by day desc, checked_at desc limit {ROWS}"
    ).df()
    if gate.empty:
        return not_built(*GATE_HINT)
    table = pd.DataFrame({
        "day": gate.day, "full-ranking version": gate.version, "passed": gate.passed,
        "failed expectations": ["<br>".join(map(html.escape, json.loads(x or "[]"))) for x in gate.failed_expectations],
        "data docs": [_docs_link(p) for p in gate.data_docs],
        "checked at": gate.checked_at.dt.strftime("%Y-%m-%d %H:%M"),
    })
    return (
        f"<h3>Distillation gate: last {len(gate)} checks, newest first ({int((~gate.passed).sum())} failed;"
        " fault drills excluded)</h3>"
        + html_table(table, ~gate.passed, raw=("failed expectations", "data docs"))
    )


def _predictions_part(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig) -> str:
    rows = latest_day(con, "distillation_predictions")
    if rows.empty:
        return not_built(*PREDICTIONS_HINT)
    heads = [h for h in RANKING_HEADS if f"p_{h}" in rows]
    table = pd.DataFrame({
        "head": heads,
        "positives": [int(rows[f"y_{h}"].sum()) for h in heads],
        "mean prediction": [rows[f"p_{h}"].mean() for h in heads],
        "observed rate": [rows[f"y_{h}"].mean() for h in heads],
        "missing predictions": [int(rows[f"p_{h}"].isna().sum()) for h in heads],
    })
    table["calibration"] = table["mean prediction"] / table["observed rate"].where(table["observed rate"] > 0)
    faults = sorted(set(rows.fault) - {"none"})
    return (
        f"<h3>Distillation set, {rows.day.max():%Y-%m-%d}: {len(rows):,} exposures scored by full_ranking"
        f" {html.escape(', '.join(sorted(set(rows.version))))}"
        + (f" (planted fault: {html.escape(', '.join(faults))})" if faults else "") + "</h3>"
        + html_table(table, _off_band(cfg, table.calibration, table.positives))
    )


def _drill_chart(drill: pd.DataFrame) -> str:
    aucs = pd.concat([drill[["fault"]].assign(model=name, auc=drill[f"auc_{name}"]) for name in ("gated", "ungated")])
    clean = drill[drill.fault == "none"]
    return bar_chart(
        aucs, "fault", "auc",
        "Pre-ranking AUC on the next day (mean over targets), gated vs ungated, per planted fault",
        group="model", value_title="pre-ranking AUC", rule=clean.auc_ungated.iloc[0] if len(clean) else None,
        rule_label="clean (fault none)", domain=(min(0.5, aucs.auc.min() - 0.02), min(1.0, aucs.auc.max() + 0.02)))


def _drill_part(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig) -> str:
    drill = latest_day(con, "fault_drill")
    if drill.empty:
        return not_built(*DRILL_HINT)
    drill = drill.sort_values("fault", key=lambda f: f.map(lambda x: FAULTS.index(x) if x in FAULTS else len(FAULTS)))
    table = drill[["fault", "caught", "failed_expectations", "auc_gated", "auc_ungated", "auc_label_only"]]
    table = table.rename(columns=lambda c: c.replace("auc_", "pre-ranking AUC ").replace("_", " "))
    return (
        f"<h3>Fault drill on {drill.day.max():%Y-%m-%d} (full ranker"
        f" {html.escape(', '.join(sorted(set(drill.scorer))))}; pre-ranking AUC on the next day, mean over"
        " targets; highlighted: a fault the gate missed, or a false alarm)</h3>"
        + html_table(table, drill.caught != (drill.fault != "none"))
        + _drill_chart(drill)
    )


def _special_groups_part(con: duckdb.DuckDBPyConnection, cfg: PlatformConfig) -> str:
    rows = latest_day(con, "special_groups_eval")
    if rows.empty:
        return not_built(*GROUPS_HINT)
    wide = rows.pivot_table(index=["segment", "head"], columns="model", values=["ece", "ratio", "auc"])
    wide.columns = [f"{metric} {model}" for metric, model in wide.columns]
    wide = wide.reset_index()
    worse = pd.Series(False, index=wide.index)
    for model in ("full+residual", "full+calibrator"):
        if f"ece {model}" in wide:
            worse |= wide[f"ece {model}"] > wide["ece full"]
    return (
        f"<h3>Special user groups on {rows.day.max():%Y-%m-%d}: expected calibration error,"
        " mean prediction / observed rate and AUC, the full ranker alone and with the residual model or the"
        " calibrator (highlighted: calibration error worse after)</h3>"
        + html_table(wide, worse)
    )


def _versions_part(cfg: PlatformConfig) -> str:
    """The last pre-ranking versions of the registry, newest first (registry.describe has no supervision: read meta)."""
    store = registry.model_store(cfg, PRERANKING)
    versions = artifacts.list_versions(store)[::-1][:ROWS]
    if not versions:
        return not_built(*VERSIONS_HINT)
    current = artifacts.current(store)
    table = pd.DataFrame({
        "version": [v.name for v in versions],
        "current": [current is not None and v.name == current.name for v in versions],
        "training window": [v.meta.get("training_window") for v in versions],
        "supervision": [v.meta.get("supervision") for v in versions],
        "warm-started from": [v.meta.get("warm_started_from") for v in versions],
        "examples": [v.meta.get("examples") for v in versions],
    })
    return (
        f"<h3>Pre-ranking versions: last {len(table)}, newest first (highlighted: label-only, the gate failed)</h3>"
        + html_table(table, table.supervision == "label_only")
    )


PARTS: tuple[tuple[str, Callable[[duckdb.DuckDBPyConnection, PlatformConfig], str], tuple[str, str]], ...] = (
    ("ranking_eval", _eval_part, EVAL_HINT),
    ("distillation_gate", _gate_part, GATE_HINT),
    ("distillation_predictions", _predictions_part, PREDICTIONS_HINT),
    ("fault_drill", _drill_part, DRILL_HINT),
    ("special_groups_eval", _special_groups_part, GROUPS_HINT),
)


def ranking_section(cfg: PlatformConfig) -> str:
    """The report's ranking section: evaluation, gate, distillation set, fault drill and pre-ranking
    versions, or "not built yet" per part."""
    parts = warehouse_parts(cfg, [(table, functools.partial(render, cfg=cfg), hint) for table, render, hint in PARTS])
    return "<h2>Ranking</h2>" + "".join(parts) + _versions_part(cfg)
