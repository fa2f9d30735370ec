"""The experiments section of the nightly report (docs/METHODS.md "Experiment readout"): an HTML fragment.

`experiments_section(cfg)` reads experiment_readout, experiment_weekly, experiment_srm and
experiment_guardrails (read-only). Per experiment: the sample-ratio test and the guardrail flags,
the readout table (metric, arm, values, diff, relative lift, 95% CI, p, CUPED estimate and CI, n),
an interactive forest plot (one row per metric x arm, plain and CUPED estimates with their CIs)
and the weekly lifts (short vs long term), both Vega-Lite (altair) embedded by
tasks/reports/fragments.py (the page that shows the section ends with its `chart_scripts`).
"""

from __future__ import annotations

import html

import altair as alt
import duckdb
import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import table_names
from tasks.experiments.readout import readout_rows, sample_ratio_summary
from tasks.reports.fragments import (
    ci_text,
    embed_chart,
    html_table,
    interval_chart,
    not_built,
    records,
    warehouse_parts,
)

HINT = ("Experiment readout", "configure `experiments`, publish the assignments and run daily_metrics")
_GUARDRAILS = {
    "dau_up_lt7_down": "DAU significantly up while LT7 is down: not an improvement",
    "lt_up_from_fewer_low_activity": "LT7 / next-day retention up while significantly fewer low-activity users "
                                     "were active: the gain may come from losing them",
}


def forest_plot(readout: pd.DataFrame) -> str:
    """One row per metric x arm: the plain and the CUPED difference to control with their 95% CIs,
    one panel per metric (own x scale), a dashed line at 0; tooltips carry the numbers."""
    points = pd.concat([
        readout.assign(estimator="plain", estimate=readout["diff"], low=readout.ci_low, high=readout.ci_high,
                       p=readout.p_value),
        readout.assign(estimator="CUPED", estimate=readout.cuped_diff, low=readout.cuped_ci_low,
                       high=readout.cuped_ci_high, p=readout.cuped_p_value),
    ]).rename(columns={"metric": "panel", "arm": "row"})
    points = points[["panel", "row", "estimator", "estimate", "low", "high", "p", "rel_lift", "n_arm", "n_control"]]
    return interval_chart(points, "arm - control (95% CI)", color="estimator", colors=["#0969da", "#cf222e"],
                          panels=list(dict.fromkeys(readout.metric)),
                          tooltip=[alt.Tooltip("p:Q", format=".3g"), alt.Tooltip("rel_lift:Q", format=".2%"),
                                   "n_arm:Q", "n_control:Q"])


def weekly_chart(weekly: pd.DataFrame) -> alt.FacetChart:
    """Per metric, each arm's difference to control per week since start with its 95% CI band:
    the short-term vs the long-term effect (a few rows per experiment: embed_chart checks them all)."""
    data = weekly[["metric", "arm", "week", "diff", "ci_low", "ci_high", "p_value"]]
    x = alt.X("week:O", title="week since start")
    band = alt.Chart().mark_area(opacity=0.2).encode(x=x, y="ci_low:Q", y2="ci_high:Q", color="arm:N")
    line = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("diff:Q", title="arm - control"), color="arm:N",
        tooltip=["metric:N", "arm:N", "week:O", alt.Tooltip("diff:Q", format=".4g"),
                 alt.Tooltip("ci_low:Q", format=".4g"), alt.Tooltip("ci_high:Q", format=".4g"),
                 alt.Tooltip("p_value:Q", format=".3g")])
    zero = alt.Chart().mark_rule(strokeDash=[4, 4], color="grey").encode(y=alt.datum(0))
    return (
        alt.layer(band, line, zero, data=alt.Data(values=records(data)))
        .properties(width=220, height=140)
        .facet(facet=alt.Facet("metric:N", title=None, sort=list(dict.fromkeys(data.metric))), columns=4)
        .resolve_scale(y="independent")
    )


def _srm_line(srm: pd.Series | None) -> str:
    if srm is None:
        return '<p class="muted">Sample-ratio test: no active user yet.</p>'
    text = (f"Sample-ratio test on the assigned users: p = {srm.assigned_p_value:.3g} (df {int(srm.df)}); "
            f"active users {html.escape(srm.active_users)}, p = {srm.p_value:.3g} (a diagnostic: an arm that "
            "changes who comes back departs from the split by its effect)")
    if srm.is_mismatch:
        return f'<p class="warn"><b>Sample-ratio mismatch</b> - {text}: do not trust this readout.</p>'
    return f"<p>{text}: no mismatch.</p>"


def _guardrail_lines(guardrails: pd.DataFrame) -> str:
    notes = [f"{html.escape(str(row.arm))}: {text}" for row in guardrails.itertuples()
             for flag, text in _GUARDRAILS.items() if getattr(row, flag)]
    if not notes:
        return "<p>Guardrails: no arm flagged (DAU up with LT7 down; LT up from fewer low-activity users).</p>"
    return '<div class="warn"><b>Guardrails</b><ul>' + "".join(f"<li>{n}</li>" for n in notes) + "</ul></div>"


def _experiment_part(con: duckdb.DuckDBPyConnection, experiment: str, srm: pd.Series | None,
                     guardrails: pd.DataFrame, weekly: pd.DataFrame) -> str:
    readout = readout_rows(con, experiment)
    period = con.execute(
        "select any_value(start_day), any_value(period_end), any_value(served_days) from experiment_readout "
        "where experiment = ?", [experiment]).fetchone()
    flagged = set(guardrails[guardrails[list(_GUARDRAILS)].any(axis=1)].arm)
    table = readout.assign(
        ci=ci_text(readout.ci_low, readout.ci_high), cuped_ci=ci_text(readout.cuped_ci_low, readout.cuped_ci_high),
    )[["metric", "arm", "control_arm", "control_value", "arm_value", "diff", "rel_lift", "ci", "p_value",
       "cuped_diff", "cuped_ci", "n_control", "n_arm"]].rename(columns={
           "control_arm": "control", "arm_value": "arm value", "control_value": "control value",
           "rel_lift": "rel. lift", "ci": "95% CI", "p_value": "p", "cuped_diff": "CUPED diff",
           "cuped_ci": "CUPED 95% CI", "n_control": "n control", "n_arm": "n arm"})
    table["rel. lift"] = [f"{v:+.2%}" if pd.notna(v) else None for v in table["rel. lift"]]
    mine = weekly[weekly.experiment == experiment]
    return (
        f"<h3>{html.escape(experiment)}: {period[0]:%Y-%m-%d} .. {period[1]:%Y-%m-%d} ({period[2]} served days)</h3>"
        + _srm_line(srm) + _guardrail_lines(guardrails)
        + html_table(table, warn=[a in flagged or bool(srm is not None and srm.is_mismatch) for a in table.arm])
        + "<h4>Forest plot: arm - control, plain and CUPED, 95% CI</h4>"
        + forest_plot(readout)
        + ("<h4>Weekly lifts: short vs long term</h4>" + embed_chart(weekly_chart(mine))
           if not mine.empty else '<p class="muted">Weekly lifts: no week yet.</p>')
    )


def _experiments_part(con: duckdb.DuckDBPyConnection) -> str:
    experiments = [r[0] for r in con.execute(
        "select distinct experiment from experiment_readout order by experiment").fetchall()]
    if not experiments:
        return not_built(HINT[0], "no experiment with served days yet: configure `experiments` and run daily_metrics")
    tables = table_names(con)
    srm = sample_ratio_summary(con).set_index("experiment")
    guardrails = (con.execute("select * from experiment_guardrails").df() if "experiment_guardrails" in tables
                  else pd.DataFrame(columns=["experiment", "arm", *_GUARDRAILS]))
    weekly = (con.execute("select * from experiment_weekly order by experiment, metric, arm, week").df()
              if "experiment_weekly" in tables else pd.DataFrame(columns=["experiment"]))
    parts = [_experiment_part(con, e, srm.loc[e] if e in srm.index else None,
                              guardrails[guardrails.experiment == e], weekly) for e in experiments]
    return "".join(parts)


def experiments_section(cfg: PlatformConfig) -> str:
    """The report's experiments section: per experiment its readout, or "not built yet"."""
    parts = warehouse_parts(cfg, [("experiment_readout", _experiments_part, HINT)])
    return '<section id="experiments"><h2>Experiments: readout</h2>' + "".join(parts) + "</section>"
