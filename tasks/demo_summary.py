"""The summary `recpipe demo` prints: what landed per day, and what was quarantined."""

from __future__ import annotations

from tasks.alerts import read_alerts
from tasks.config import PlatformConfig

DAILY_SQL = """
with ev as (
    select cast(ts as date) as day,
           count(*) as events,
           count(distinct user_id) as dau,
           count(*) filter (where event_type = 'impression') as impressions,
           count(*) filter (where event_type = 'click') as clicks,
           count(distinct user_id) filter (where event_type = 'publish') as publishers
    from raw.events group by 1
), q as (
    select cast(dt as date) as day, count(*) as quarantined from raw.quarantine group by 1
)
select ev.day, ev.events, ev.dau, ev.impressions, ev.clicks,
       round(ev.clicks / nullif(ev.impressions, 0), 4) as ctr,
       round(ev.publishers / ev.dau, 4) as penetration,
       coalesce(q.quarantined, 0) as quarantined
from ev left join q using (day)
order by ev.day
"""


def print_summary(cfg: PlatformConfig) -> None:
    """Print per-day counts read from the warehouse (read-only) and the alert count."""
    from tasks.warehouse import connect

    with connect(cfg, read_only=True) as con:
        df = con.execute(DAILY_SQL).df()
        totals = {
            t: con.execute(f"select count(*) from raw.{t}").fetchone()[0]
            for t in ("users", "items", "follows", "events", "quarantine")
        }
    print("\nDaily activity (from the warehouse, raw.events):")
    print(df.to_string(index=False))
    print("\nRows in the lake: " + ", ".join(f"{k}={v:,}" for k, v in totals.items()))
    alerts = read_alerts(cfg)
    print(f"Alerts raised: {len(alerts)} (log: {cfg.alerts_log})")
    print(f"Warehouse: {cfg.warehouse_path}")
