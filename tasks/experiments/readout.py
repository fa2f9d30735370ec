"""The experiment readout's Python side (docs/METHODS.md "Experiment readout"): the sample-ratio check
that raises a data-quality alert per mismatched experiment (task `check_sample_ratio` of the
daily_metrics DAG), and the readout table of one experiment (the CLI and the nightly report).
The numbers themselves are the dbt marts of dbt/models/experiments."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb
import pandas as pd

from tasks.core.config import EXPERIMENT_METRICS, PlatformConfig
from tasks.core.warehouse import connect, table_names
from tasks.ops.alerts import Alert, raise_alert

SRM_SOURCE = "daily_metrics.check_sample_ratio"
READOUT_COLUMNS = [
    "metric", "arm", "control_arm", "control_value", "arm_value", "diff", "rel_lift", "ci_low", "ci_high", "p_value",
    "cuped_diff", "cuped_ci_low", "cuped_ci_high", "cuped_p_value", "ci_width", "cuped_ci_width", "n_control", "n_arm",
]


def sample_ratio_summary(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per experiment of experiment_srm: chi_square, df, p_value, is_mismatch, the assigned
    users' p-value and the active users per arm ("control=310, treatment=290"); empty before the
    table is built."""
    if "experiment_srm" not in table_names(con):
        return pd.DataFrame(columns=["experiment", "chi_square", "df", "p_value", "is_mismatch", "assigned_p_value",
                                     "active_users"])
    return con.execute(
        """
        select
            experiment,
            any_value(chi_square) as chi_square,
            any_value(df) as df,
            any_value(p_value) as p_value,
            bool_or(is_mismatch) as is_mismatch,
            any_value(assigned_p_value) as assigned_p_value,
            string_agg(arm || '=' || active_users, ', ' order by arm) as active_users
        from experiment_srm
        group by experiment
        order by experiment
        """
    ).df()


def check_sample_ratio(cfg: PlatformConfig) -> list[dict[str, Any]]:
    """Raise one data-quality alert (warning) per experiment whose assigned users per arm depart from
    the equal split (experiment_srm.is_mismatch); return every experiment's test result."""
    if not cfg.warehouse_path.exists():
        return []
    with connect(cfg, read_only=True) as con:
        summary = sample_ratio_summary(con)
    for row in summary[summary.is_mismatch].itertuples():
        raise_alert(Alert(
            kind="data_quality",
            severity="warning",
            title=f"Experiment {row.experiment}: sample-ratio mismatch (its readout is not trustworthy)",
            source=SRM_SOURCE,
            details={"experiment": row.experiment, "active_users": row.active_users,
                     "chi_square": round(float(row.chi_square), 3), "df": int(row.df), "p_value": float(row.p_value),
                     "assigned_p_value": float(row.assigned_p_value)},
        ), cfg)
    return [
        {"experiment": r.experiment, "chi_square": float(r.chi_square), "p_value": float(r.p_value),
         "is_mismatch": bool(r.is_mismatch)}
        for r in summary.itertuples()
    ]


def readout_rows(con: duckdb.DuckDBPyConnection, experiment: str) -> pd.DataFrame:
    """The READOUT_COLUMNS of experiment_readout for `experiment`, metrics in EXPERIMENT_METRICS
    order, then arms; empty when the table or the experiment's rows do not exist yet."""
    if "experiment_readout" not in table_names(con):
        return pd.DataFrame(columns=READOUT_COLUMNS)
    rows = con.execute(
        f"select {', '.join(READOUT_COLUMNS)} from experiment_readout where experiment = ? order by arm", [experiment]
    ).df()
    order = {m: i for i, m in enumerate(EXPERIMENT_METRICS)}
    return rows.sort_values("metric", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)


def readout_end(cfg: PlatformConfig, experiment: str) -> dt.date | None:
    """The last served day `experiment`'s readout covers (experiment_readout.period_end), if any."""
    with connect(cfg, read_only=True) as con:
        if "experiment_readout" not in table_names(con):
            return None
        end = con.execute("select max(period_end) from experiment_readout where experiment = ?", [experiment]).fetchone()[0]
    return pd.Timestamp(end).date() if end is not None else None


def readout_table(cfg: PlatformConfig, experiment: str) -> pd.DataFrame:
    """Per arm and metric of `experiment`: values, diff, relative lift, 95% CI, p-value, the CUPED
    estimate with its CI, both CI widths and the users per arm (see readout_rows)."""
    with connect(cfg, read_only=True) as con:
        return readout_rows(con, experiment)


def readout_brief(table: pd.DataFrame) -> pd.DataFrame:
    """The readout for a terminal: per metric and arm, the users, both values, the relative lift and
    its 95% CI (the difference's CI over the control value) and the p-value, rounded."""
    control = table.control_value.where(table.control_value != 0)
    return pd.DataFrame({
        "metric": table.metric,
        "arm": table.arm,
        "users": table.n_arm,
        "control": table.control_value.round(4),
        "value": table.arm_value.round(4),
        "lift": (table.rel_lift * 100).round(1).astype(str) + "%",
        "95% CI": "[" + (table.ci_low / control * 100).round(1).astype(str) + "%, "
                  + (table.ci_high / control * 100).round(1).astype(str) + "%]",
        "p": table.p_value.round(3),
    })
