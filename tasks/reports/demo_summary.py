"""The summary `recpipe demo` prints: what landed per day, what was quarantined, the core
metrics of the last complete day and where the report is."""

from __future__ import annotations

import pandas as pd

from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect, table_names
from tasks.ops.alerts import read_alerts
from tasks.reports.page import reports_metrics_dir
from tasks.retrieval.ann_refresh import index_store

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


POOLS_SQL = """
with last as (
    select pool, max(as_of) as as_of from pool_versions group by pool
)
select v.pool, v.version, v.status, v.size, v.adds, v.removes, c.version as current_version
from pool_versions as v
inner join last using (pool, as_of)
left join pool_current as c using (pool)
order by v.pool
"""


SOCIAL_SQL = {
    "kol_scores": """
        select day, user_id, shares, visits, round(kol_score, 2) as kol_score, round(percentile, 4) as percentile, is_kol
        from kol_scores where day = (select max(day) from kol_scores) order by kol_score desc, user_id limit 5
    """,
    "implicit_follows": """
        select day, count(*) as implicit_pairs, count(distinct user_id) as users
        from implicit_follows group by day order by day
    """,
}


GATE_SQL = """
select day + 1 as evaluated_on, model, candidate, round(candidate_recall, 4) as recall_at_k,
       round(current_recall, 4) as current_recall, round(popularity_recall, 4) as popularity_recall, passed
from model_gate order by day, model
"""


RANKING_SQL = """
select e.day, e.version as full_ranker, round(avg(e.auc) filter (where e.head = 'click'), 4) as auc_click,
       round(avg(e.auc), 4) as auc_mean_heads, any_value(g.passed) as distillation_gate_passed
from ranking_eval as e
left join distillation_gate as g on g.day = e.day and g.version = e.version
where e.segment = 'all'
group by all order by e.day
"""


def print_summary(cfg: PlatformConfig) -> None:
    """Print per-day metrics, the last complete day's core metrics per segment, alerts and paths."""
    with connect(cfg, read_only=True) as con:
        df = con.execute(DAILY_SQL).df()
        metrics = con.execute(METRICS_SQL).df()
        last_complete = con.execute(
            "select max(day) from retention_daily where lt7_complete and segment = 'all'"
        ).fetchone()[0]
        tables = table_names(con)
        pools = con.execute(POOLS_SQL).df() if "pool_versions" in tables else None
        social = {t: con.execute(q).df() for t, q in SOCIAL_SQL.items() if t in tables}
        gates = con.execute(GATE_SQL).df() if "model_gate" in tables else None
        ranking = con.execute(RANKING_SQL).df() if {"ranking_eval", "distillation_gate"} <= tables else None
        totals = {
            t: con.execute(f"select count(*) from raw.{t}").fetchone()[0]
            for t in ("users", "items", "follows", "events", "quarantine")
        }
    print("\nDaily metrics (dbt mart metrics_daily, everyone) and quarantined rows:")
    print(df.to_string(index=False))
    print("\nRows in the lake: " + ", ".join(f"{k}={v:,}" for k, v in totals.items()))
    if last_complete is None:
        print("\nCore metrics with LT7: no day's 7-day window has landed yet (the first comes 7 days after the first day)")
    else:
        print(f"\nCore metrics on {last_complete}, the last day whose LT7 window has landed (dbt marts):")
        print(metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if pools is not None:
        print("\nContent pools, latest refresh (published versions become current; see the report):")
        print(pools.to_string(index=False))
    if "kol_scores" in social:
        print("\nTop KOLs of the last scored day (kol_scores):")
        print(social["kol_scores"].to_string(index=False))
    if "implicit_follows" in social:
        print("\nImplicit follows per day (implicit_follows):")
        print(social["implicit_follows"].to_string(index=False))
    if gates is not None:
        print(f"\nNightly retrieval training: each candidate's Recall@{cfg.evaluation.k[0]} on the next day's clicks, "
              "against the current version and popularity (model_gate; passed = published):")
        print(gates.to_string(index=False))
        _print_indexes(cfg)
    if ranking is not None:
        print("\nFull ranker, next-day AUC and the distillation gate on its predictions (ranking_eval, distillation_gate):")
        print(ranking.to_string(index=False))
    _print_feeds(cfg)
    alerts = read_alerts(cfg)
    print(f"Alerts raised: {len(alerts)} (log: {cfg.alerts_log})")
    print(f"Warehouse: {cfg.warehouse_path}")
    print(f"Report (metrics, pools, KOLs, implicit follows, retrieval, ranking): {reports_metrics_dir(cfg) / 'index.html'}")


def _print_indexes(cfg: PlatformConfig) -> None:
    """The current ANN index per (vector model, pool)."""
    rows = []
    for model in cfg.ann.vector_models:
        for pool in cfg.pools:
            v = artifacts.current(index_store(cfg, model, pool.name))
            if v:
                rows.append(f"  {model} x {pool.name}: {v.meta['kind']} over {v.meta['n_items']} items, "
                            f"recall@{v.meta['recall_k']} {v.meta['recall']:.3f} (model {v.meta['model_version']})")
    print("ANN indexes (current):\n" + ("\n".join(rows) if rows else "  none yet"))


def _print_feeds(cfg: PlatformConfig) -> None:
    """The current feeds version: who got a feed, how fast, and the funnel's mean counts."""
    version = artifacts.current(registry.feed_store(cfg))
    if version is None:
        return
    m = version.meta
    funnel = pd.read_parquet(version.path / "funnel.parquet")
    stages = ["retrieved", "merged", "filtered", "preranked", "feed", "exploration"]
    means = ", ".join(f"{s} {funnel[s].mean():.0f}" for s in stages)
    print(f"\nFeeds for {m['day']} (feeds table, version {version.name}): {m['users']:,} users x "
          f"{len(m['strategies'])} strategies, {m['feeds_per_s']:.0f} feeds/s, GX passed: {m['gate_passed']}; "
          f"mean candidates per user: {means}" + (f"; served without {sorted(m['broken'])}" if m["broken"] else ""))
