"""Content pool refreshes (docs/METHODS.md "Pool refresh and publish"): render candidates in dbt, validate each pool's new
version with GX, and publish it by switching the pool's pointer.

Tables (DuckDB warehouse, written here in one transaction per published version):

- `pool_versions` (pool, version, as_of, status published | rejected, size, adds, removes,
  failed_expectations, created_at): every refresh of every pool;
- `pool_members` (pool, version, segment, item_id, score, rank, added_at, as_of): the members of
  every version, rejected ones kept for inspection;
- `pool_history` (pool, version, as_of, segment, item_id, change add | remove, reason): what each
  published refresh changed against the previous published version;
- `pool_current` (pool, version, as_of, published_at): the pointer; `pool_current_members` is the
  view consumers (ANN refresh, serving) read.

A version is named by its refresh time (`20260130T0000`); refreshing the same time again replaces
that version. A version fails when its GX suite fails: it is recorded as rejected, a data-quality
alert names the failed expectations and says which version stays current (or that the pool has
none yet), and the pointer does not move.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.core.config import PlatformConfig, PoolConfig
from tasks.core.days import day_range
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import connect, connect_writer, table_names
from tasks.ops.alerts import Alert, DataQualityRejected, raise_alert

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
AS_OF_FORMAT = "%Y-%m-%d %H:00:00"

_DDL = """
create table if not exists pool_versions (
    pool varchar, version varchar, as_of timestamp, status varchar, size bigint, adds bigint,
    removes bigint, failed_expectations varchar, created_at timestamp
);
create table if not exists pool_members (
    pool varchar, version varchar, segment varchar, item_id bigint, score double, rank bigint,
    added_at timestamp, as_of timestamp
);
create table if not exists pool_history (
    pool varchar, version varchar, as_of timestamp, segment varchar, item_id bigint,
    change varchar, reason varchar
);
create table if not exists pool_current (
    pool varchar primary key, version varchar, as_of timestamp, published_at timestamp
);
create or replace view pool_current_members as
select m.pool, m.version, m.segment, m.item_id, m.score, m.rank, m.added_at
from pool_members as m
inner join pool_current as c using (pool, version);
"""

# Why an item left a pool: the first of these that holds for it at the refresh.
_REMOVAL_REASON = """
case
    when c.item_id is null then 'aged_out'
    when c.expired then 'expired'
    when not c.passes_floor then 'below_impressions_floor'
    when not c.passes_min_rate then 'below_min_rate'
    else 'outranked'
end
"""


@dataclass(frozen=True)
class PublishOutcome:
    """One pool version: published or rejected, with its size and changes."""

    pool: str
    version: str
    as_of: dt.datetime
    published: bool
    size: int
    adds: int
    removes: int
    failed: list[dict]


def version_name(as_of: dt.datetime) -> str:
    """The version id of a refresh: its time, e.g. 20260130T0000."""
    return as_of.strftime("%Y%m%dT%H%M")


def end_of_day(day: dt.date) -> dt.datetime:
    """The refresh time of a daily refresh for `day`: midnight after it (every event of the day counts)."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time())


def candidates_window(times: Sequence[dt.datetime], pools: Sequence[str]) -> dict[str, Any]:
    """What dbt renders `pools` at refresh `times` with (dbt_runner.run_window arguments): the days
    [ds_from, ds] whose item stats the refreshes read (each reads up to the hour before it), the
    times as `as_of` ('YYYY-MM-DD HH:00:00', oldest first) and the pools."""
    if not times or not pools:
        raise ValueError("a pool refresh needs at least one refresh time and one pool")
    for t in times:
        if t.minute or t.second or t.microsecond:
            raise ValueError(f"refresh time {t} is not on the hour")
    days = sorted((t - dt.timedelta(hours=1)).date() for t in times)
    return {
        "ds_from": days[0].isoformat(),
        "ds": days[-1].isoformat(),
        "as_of": [t.strftime(AS_OF_FORMAT) for t in sorted(times)],
        "pools": list(pools),
    }


def build_candidates(cfg: PlatformConfig, times: Sequence[dt.datetime], pools: Sequence[str]) -> None:
    """dbt: rebuild the item stats of the days the refreshes read and render `pools` at `times`
    (the content_pools DAGs run the same selection as their `dbt` task group)."""
    run_dbt(cfg, ["build", "--selector", "pools"], **candidates_window(times, pools))


def _members(con, pool: str, as_of: dt.datetime) -> pd.DataFrame:
    """The new version's members, with the item facts the GX suite checks (read from the items)."""
    return con.execute(
        """
        select c.segment, c.item_id, c.score, c.rank, i.publish_ts, i.expire_ts,
               count(*) over (partition by c.segment) as segment_size
        from pool_candidates as c
        inner join stg_items as i using (item_id)
        where c.pool = ? and c.as_of = ? and c.is_member
        order by c.segment, c.rank
        """,
        [pool, as_of],
    ).df()


def publish_version(cfg: PlatformConfig, pool: PoolConfig, as_of: dt.datetime) -> PublishOutcome:
    """Validate the rendered version of `pool` at `as_of` and publish it (or reject it, alert, and
    leave the pointer where it was). Re-running the same refresh gives the same tables."""
    from expectations.pools import pool_expectations  # lazy: GX: imported by the task, not at DAG parse
    from expectations.runner import alert_failure, validate_frame  # lazy: as above

    version = version_name(as_of)
    with connect_writer(cfg) as con:
        con.execute(_DDL)
        members = _members(con, pool.name, as_of)
        outcome = validate_frame(members, f"pool_{pool.name}", pool_expectations(pool, as_of))
        con.execute("begin transaction")
        for table in ("pool_versions", "pool_members", "pool_history"):
            con.execute(f"delete from {table} where pool = ? and version = ?", [pool.name, version])
        previous = con.execute(
            "select max(version) from pool_versions where pool = ? and status = 'published' and as_of < ?",
            [pool.name, as_of],
        ).fetchone()[0]
        con.execute(
            """
            insert into pool_members
            select ?, ?, n.segment, n.item_id, n.score, n.rank, coalesce(p.added_at, ?), ?
            from pool_candidates as n
            left join pool_members as p
                on p.pool = n.pool and p.version = ? and p.segment = n.segment and p.item_id = n.item_id
            where n.pool = ? and n.as_of = ? and n.is_member
            """,
            [pool.name, version, as_of, as_of, previous, pool.name, as_of],
        )
        adds = removes = 0
        if outcome.success:
            adds, removes = _record_history(con, pool.name, version, previous, as_of)
        con.execute(
            "insert into pool_versions values (?, ?, ?, ?, ?, ?, ?, ?, now())",
            [pool.name, version, as_of, "published" if outcome.success else "rejected", len(members),
             adds, removes, json.dumps(outcome.failed, default=str)],
        )
        if outcome.success:
            con.execute(
                """
                insert into pool_current values (?, ?, ?, now())
                on conflict (pool) do update set version = excluded.version, as_of = excluded.as_of,
                    published_at = excluded.published_at
                where excluded.as_of >= pool_current.as_of
                """,
                [pool.name, version, as_of],
            )
        con.execute("commit")
        current = con.execute("select version from pool_current where pool = ?", [pool.name]).fetchone()
    result = PublishOutcome(pool.name, version, as_of, outcome.success, len(members), adds, removes, outcome.failed)
    if outcome.success:
        log.info("pool %s: version %s published, %d members (+%d / -%d)", pool.name, version, len(members), adds, removes)
    else:
        alert_failure(
            cfg, outcome, source=f"content_pools.{pool.name}",
            title=f"Pool {pool.name}: version {version} rejected; "
                  + (f"version {current[0]} stays current" if current else "no previous version: the pool has none yet"),
            details={"pool": pool.name, "version": version, "as_of": str(as_of), "members": len(members)},
        )
    return result


def _record_history(con, pool: str, version: str, previous: str | None, as_of: dt.datetime) -> tuple[int, int]:
    """Adds and removes of `version` against the previous published one, with removal reasons."""
    con.execute(
        f"""
        insert into pool_history
        with new as (select segment, item_id from pool_members where pool = $pool and version = $version),
        old as (select segment, item_id from pool_members where pool = $pool and version = $previous)
        select $pool, $version, $as_of, n.segment, n.item_id, 'add', null
        from new as n anti join old as o using (segment, item_id)
        union all
        select $pool, $version, $as_of, o.segment, o.item_id, 'remove', {_REMOVAL_REASON}
        from old as o
        anti join new as n using (segment, item_id)
        left join pool_candidates as c
            on c.pool = $pool and c.as_of = $as_of and c.segment = o.segment and c.item_id = o.item_id
        """,
        {"pool": pool, "version": version, "previous": previous, "as_of": as_of},
    )
    return con.execute(
        "select count(*) filter (where change = 'add'), count(*) filter (where change = 'remove') "
        "from pool_history where pool = ? and version = ?",
        [pool, version],
    ).fetchone()


def refresh_pools(
    cfg: PlatformConfig, times: Sequence[dt.datetime], pools: Sequence[str] | None = None
) -> list[PublishOutcome]:
    """Render and publish `pools` (default: all) at each refresh time, oldest first."""
    names = list(pools) if pools is not None else [p.name for p in cfg.pools]
    build_candidates(cfg, times, names)
    return [publish_version(cfg, cfg.pool(name), t) for t in sorted(times) for name in names]


class PoolRejected(DataQualityRejected):
    """A refresh produced a version that failed its GX suite (the pointer does not move)."""


def daily_refresh_times(days: dict[str, str]) -> list[dt.datetime]:
    """The refresh times of a daily run over days {"ds_from", "ds"} (tasks.core.days.resolve_days):
    the end of each day."""
    first, last = (dt.date.fromisoformat(days[k]) for k in ("ds_from", "ds"))
    return [end_of_day(d) for d in day_range(first, last)]


def hourly_refresh_time(at: str | None, data_interval_end: dt.datetime | None) -> list[dt.datetime]:
    """The refresh time of an hourly run: param `at` when given, else the end of the run's data
    interval, truncated to the hour (UTC)."""
    when = dt.datetime.fromisoformat(at) if at else data_interval_end
    if when is None:
        raise ValueError("an hourly pool refresh needs param `at` or a data interval")
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return [when.replace(minute=0, second=0, microsecond=0)]


def publish_all(cfg: PlatformConfig, pool: str, times: Sequence[str]) -> dict[str, str]:
    """Publish the rendered versions of `pool` at `times`, oldest first; return the last published
    version ({"version", "as_of"}) or raise PoolRejected naming the rejected ones."""
    outcomes = [publish_version(cfg, cfg.pool(pool), dt.datetime.strptime(t, AS_OF_FORMAT)) for t in sorted(times)]
    rejected = [o for o in outcomes if not o.published]
    if rejected:
        raise PoolRejected(
            f"pool {pool}: rejected version(s) "
            + "; ".join(f"{o.version} ({', '.join(f['expectation'] for f in o.failed)})" for o in rejected)
        )
    last = outcomes[-1]
    return {"pool": pool, "version": last.version, "as_of": last.as_of.strftime(AS_OF_FORMAT)}


def pools_without_version(cfg: PlatformConfig) -> list[str]:
    """The declared pools that have no current version (a consumer reading them gets nothing)."""
    with connect(cfg, read_only=True) as con:
        current = ({r[0] for r in con.execute("select pool from pool_current").fetchall()}
                   if "pool_current" in table_names(con) else set())
    return [p.name for p in cfg.pools if p.name not in current]


def last_rejected(cfg: PlatformConfig) -> set[str]:
    """The pools whose latest refresh was rejected (its rejection has raised an alert)."""
    with connect(cfg, read_only=True) as con:
        if "pool_versions" not in table_names(con):
            return set()
        return {r[0] for r in con.execute(
            "select pool, status from pool_versions "
            "qualify row_number() over (partition by pool order by as_of desc) = 1").fetchall() if r[1] == "rejected"}


def check_every_pool_current(cfg: PlatformConfig) -> list[str]:
    """One data-quality alert naming every declared pool without a current version, but those whose
    latest refresh was rejected (that rejection alerted already); the names of all without one."""
    missing = pools_without_version(cfg)
    unalerted = [p for p in missing if p not in last_rejected(cfg)]
    if unalerted:
        raise_alert(Alert(
            kind="data_quality", severity="warning", source="content_pools.check_every_pool_current",
            title=f"declared pools without a current version: {', '.join(unalerted)}",
            details={"pools": unalerted, "what to do": "refresh them (recpipe pools) or fix their filters; "
                     "consumers of pool_current_members get no items from them"},
        ), cfg)
    return missing
