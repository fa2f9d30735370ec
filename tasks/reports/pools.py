"""The pools section of the nightly report: each pool's size over its refreshes (rejected versions
marked), what each refresh added and removed (and why), and the category mix of the current
versions, with a table of the latest refresh per pool."""

from __future__ import annotations

import html
import json

import matplotlib.pyplot as plt
import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect, table_names
from tasks.reports.fragments import embed_png

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
    fig, ax = plt.subplots(figsize=(12, 4))
    for pool, rows in versions.groupby("pool"):
        ok = rows[rows.status == "published"]
        (line,) = ax.plot(ok.as_of, ok["size"], marker=".", label=pool)
        bad = rows[rows.status == "rejected"]
        if len(bad):
            ax.scatter(bad.as_of, bad["size"], marker="x", color=line.get_color(), s=60, zorder=3)
    ax.set_yscale("symlog")
    ax.set_title("Members per pool and refresh (x = version rejected by its GX suite, not published)", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return embed_png(fig)


def _churn(versions: pd.DataFrame, removals: pd.DataFrame) -> str:
    pools = sorted(versions.pool.unique())
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(pools) + 1.5))
    done = versions[versions.status == "published"].sort_values("as_of")
    done = done[done.groupby("pool").cumcount() > 0]  # a pool's first version adds everything
    last = done.groupby("pool").tail(7).groupby("pool")[["adds", "removes"]].mean()
    last = last.reindex(pools).fillna(0)
    axes[0].barh(pools, last.adds, color="tab:green", label="added")
    axes[0].barh(pools, -last.removes, color="tab:red", label="removed")
    axes[0].axvline(0, color="grey", lw=1)
    axes[0].set_title("Adds / removes per refresh (mean of the last 7 published, first excluded)", fontsize=10)
    axes[0].legend(fontsize=7)
    reasons = removals.pivot_table(index="pool", columns="reason", values="n", aggfunc="sum").reindex(pools).fillna(0)
    left = pd.Series(0.0, index=pools)
    for reason in reasons.columns:
        axes[1].barh(pools, reasons[reason], left=left, label=reason)
        left += reasons[reason]
    axes[1].set_title("Why items left (all refreshes)", fontsize=10)
    axes[1].legend(fontsize=7)
    axes[1].set_yticks([])
    return embed_png(fig)


def _mix(mix: pd.DataFrame) -> str:
    share = mix.pivot_table(index="pool", columns="category_l1", values="n", aggfunc="sum").fillna(0)
    share = share.div(share.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(share) + 1.5))
    left = pd.Series(0.0, index=share.index)
    cmap = plt.get_cmap("tab20")
    for k, category in enumerate(share.columns):
        ax.barh(share.index, share[category], left=left, label=category, color=cmap(k % 20))
        left += share[category]
    ax.set_xlim(0, 1)
    ax.set_title("First-level category mix of each pool's current version", fontsize=10)
    ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return embed_png(fig)


def _latest_table(versions: pd.DataFrame) -> str:
    last = versions.sort_values("as_of").groupby("pool").tail(1).copy()
    last["failed"] = last.failed_expectations.map(_failed_names)
    last["as_of"] = last.as_of.dt.strftime("%Y-%m-%d %H:%M")
    cols = ["pool", "version", "as_of", "status", "size", "adds", "removes", "failed"]
    return last[cols].to_html(index=False, border=0, escape=True)


def _failed_names(failed_json: str | None) -> str:
    names = sorted({f["expectation"] for f in json.loads(failed_json or "[]")})
    return ", ".join(names)


def pools_section(cfg: PlatformConfig) -> str:
    """The HTML of the pools section (charts inlined)."""
    tables = load_pool_tables(cfg)
    if tables is None or tables["versions"].empty:
        return "<h2>Content pools</h2><p>No pool refresh yet: run the content_pools DAG.</p>"
    versions = tables["versions"]
    rejected = versions[versions.status == "rejected"]
    note = (
        f"<p class='warn'>{len(rejected)} version(s) rejected by their GX suite (the previous version stayed current): "
        + html.escape(", ".join(f"{r.pool} {r.version}" for r in rejected.itertuples())) + "</p>"
        if len(rejected) else ""
    )
    return (
        "<h2>Content pools</h2>" + note + _latest_table(versions) + _sizes(versions)
        + _churn(versions, tables["removals"]) + (_mix(tables["mix"]) if len(tables["mix"]) else "")
    )
