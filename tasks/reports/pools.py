"""The pools section of the nightly report: each pool's size over its refreshes (rejected versions
drawn apart), what each refresh added and removed (and why), and the category mix of the current
versions, with a table of the latest refresh per pool (interactive charts: tasks/reports/fragments.py)."""

from __future__ import annotations

import html
import json

import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect, table_names
from tasks.reports.fragments import FINAL, bar_chart, html_table, time_chart

REJECTED = "rejected by its GX suite (not published)"
NOTED = 10  # rejected versions named in the note
_TABLES = ("pool_versions", "pool_members", "pool_history", "pool_current")


def load_pool_tables(cfg: PlatformConfig) -> dict[str, pd.DataFrame] | None:
    """Versions, removals by reason, and the current members' categories; None before the first refresh."""
    with connect(cfg, read_only=True) as con:
        if not set(_TABLES) <= table_names(con):
            return None
        return {
            "versions": con.execute("select * from pool_versions order by pool, as_of").df(),
            "removals": con.execute(
                "select pool, as_of, reason, count(*) as n from pool_history where change = 'remove' "
                "group by all order by all"
            ).df(),
            "mix": con.execute(
                """
                select m.pool, i.category_l1, count(*) as n
                from pool_current_members as m inner join stg_items as i using (item_id)
                group by all order by all
                """
            ).df(),
        }


def _sizes(versions: pd.DataFrame) -> str:
    points = pd.DataFrame({
        "day": versions.as_of, "series": versions.pool, "value": versions["size"].astype(float),
        "status": versions.status.map(lambda s: FINAL if s == "published" else REJECTED),
        "version": versions.version, "adds": versions.adds, "removes": versions.removes})
    return time_chart(points, "Members per pool and refresh (symlog scale)", apart=REJECTED,
                      y_scale="symlog", tooltip=["version", "adds", "removes"], final_label="published")


def _churn(versions: pd.DataFrame, removals: pd.DataFrame) -> str:
    pools = sorted(versions.pool.unique())
    done = versions[versions.status == "published"].sort_values("as_of")
    done = done[done.groupby("pool").cumcount() > 0]  # a pool's first version adds everything
    last = done.groupby("pool").tail(7).groupby("pool")[["adds", "removes"]].mean().reindex(pools).fillna(0)
    changes = pd.concat([pd.DataFrame({"pool": pools, "change": "added", "members": last.adds.to_numpy()}),
                         pd.DataFrame({"pool": pools, "change": "removed", "members": -last.removes.to_numpy()})])
    reasons = removals.groupby(["pool", "reason"], as_index=False).n.sum()
    return (
        bar_chart(changes, "pool", "members", "Adds / removes per refresh (mean of the last 7 published, "
                  "first excluded)", group="change", stacked=True, horizontal=True, rule=0)
        + (bar_chart(reasons, "pool", "n", "Why items left (all refreshes)", group="reason", stacked=True,
                     horizontal=True, value_title="items removed") if len(reasons) else "")
    )


def _mix(mix: pd.DataFrame) -> str:
    share = mix.groupby(["pool", "category_l1"], as_index=False).n.sum()
    share["share"] = share.n / share.groupby("pool").n.transform("sum")
    return bar_chart(share, "pool", "share", "First-level category mix of each pool's current version",
                     group="category_l1", stacked=True, horizontal=True, domain=(0, 1),
                     tooltip=["n:Q"])


def _latest_table(versions: pd.DataFrame) -> str:
    last = versions.sort_values("as_of").groupby("pool").tail(1).copy()
    last["failed"] = last.failed_expectations.map(_failed_names)
    cols = ["pool", "version", "as_of", "status", "size", "adds", "removes", "failed"]
    return html_table(last[cols], last.status == "rejected")


def _what_stayed(versions: pd.DataFrame, pool: str, as_of: pd.Timestamp) -> str:
    """What stayed current when `pool`'s version of `as_of` was rejected."""
    before = versions[(versions.pool == pool) & (versions.status == "published") & (versions.as_of < as_of)]
    return f"{before.version.iloc[-1]} stayed current" if len(before) else "no previous version: the pool had none yet"


def _failed_names(failed_json: str | None) -> str:
    names = sorted({f["expectation"] for f in json.loads(failed_json or "[]")})
    return ", ".join(names)


def pools_section(cfg: PlatformConfig) -> str:
    """The HTML of the pools section (interactive charts)."""
    tables = load_pool_tables(cfg)
    if tables is None or tables["versions"].empty:
        return "<h2>Content pools</h2><p>No pool refresh yet: run the content_pools DAG.</p>"
    versions = tables["versions"]
    rejected = versions[versions.status == "rejected"]
    note = (
        f"<p class='warn'>{len(rejected)} version(s) rejected by their GX suite, the pointer unmoved; the last "
        f"{min(len(rejected), NOTED)}: "
        + html.escape("; ".join(f"{r.pool} {r.version} ({_what_stayed(versions, r.pool, r.as_of)})"
                                for r in rejected.tail(NOTED).itertuples())) + "</p>"
        if len(rejected) else ""
    )
    return (
        "<h2>Content pools</h2>" + note + _latest_table(versions) + _sizes(versions)
        + _churn(versions, tables["removals"]) + (_mix(tables["mix"]) if len(tables["mix"]) else "")
    )
