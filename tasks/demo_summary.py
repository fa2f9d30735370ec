"""The summary `recpipe demo` prints: what landed per day, what was quarantined, the core
metrics of the last complete day and where the report is."""

from __future__ import annotations

from tasks.alerts import read_alerts
from tasks.config import PlatformConfig
from tasks.report import reports_metrics_dir

DAILY_SQL = """
with q as (
    select cast(dt as date) as day, count(*) as quarantined from raw.quarantine group by 1
)
select m.day, m.dau, m.new_users, m.impressions, m.clicks,
       round(m.ctr, 4) as ctr, round(m.penetration_rate, 4) as penetration,
       coalesce(q.quarantined, 0) as quarantined
from metrics_daily as m
left join q using (day)
where m.segment = 'all' and m.experiment_bucket = 'all'
order by m.day
"""

METRICS_SQL = """
select m.segment, m.dau, r.lt7, m.penetration_rate, m.ctr, r.next_day_retention
from metrics_daily as m
inner join retention_daily as r using (day, segment, experiment_bucket)
where m.experiment_bucket = 'all' and m.day = (
    select max(day) from retention_daily where lt7_complete and segment = 'all' and experiment_bucket = 'all'
)
order by m.segment <> 'all', m.segment
"""


def print_summary(cfg: PlatformConfig) -> None:
    """Print per-day metrics, the last complete day's core metrics per segment, alerts and paths."""
    from tasks.warehouse import connect

    with connect(cfg, read_only=True) as con:
        df = con.execute(DAILY_SQL).df()
        metrics = con.execute(METRICS_SQL).df()
        last_complete = con.execute(
            "select max(day) from retention_daily where lt7_complete and segment = 'all'"
        ).fetchone()[0]
        totals = {
            t: con.execute(f"select count(*) from raw.{t}").fetchone()[0]
            for t in ("users", "items", "follows", "events", "quarantine")
        }
    print("\nDaily metrics (dbt mart metrics_daily, everyone) and quarantined rows:")
    print(df.to_string(index=False))
    print("\nRows in the lake: " + ", ".join(f"{k}={v:,}" for k, v in totals.items()))
    print(f"\nCore metrics on {last_complete}, the last day whose LT7 window has landed (dbt marts):")
    print(metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    alerts = read_alerts(cfg)
    print(f"Alerts raised: {len(alerts)} (log: {cfg.alerts_log})")
    print(f"Warehouse: {cfg.warehouse_path}")
    print(f"Metrics report: {reports_metrics_dir(cfg) / 'index.html'}")
