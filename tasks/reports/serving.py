"""The recommendation-path section of the nightly report, as an HTML fragment.

`serving_section(cfg)` reads the current feeds artifact's funnel.parquet (candidates per user after
each stage and per channel, per strategy), the `feeds` table's latest day (the channel mix of the
final feeds per segment; exploration share, spacing relaxed share, distinct items and categories per
strategy) and `funnel_eval`'s latest day (the offline funnel evaluation: the feed next to its merged
candidates, popularity and each channel, per user group; its diversity measures). A part not built
yet says so.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import duckdb
import matplotlib.pyplot as plt
import pandas as pd

from tasks.core import artifacts, registry
from tasks.core.config import ALL, PlatformConfig
from tasks.core.warehouse import table_names
from tasks.reports.fragments import embed_png, html_table, latest_day, not_built, warehouse_parts

FEEDS_HINT = ("Feeds", "run the feeds DAG: `recpipe feeds --day D`")
EVAL_HINT = ("Funnel evaluation", "run `recpipe evaluate --day D --funnel`")
STAGES = ("retrieved", "merged", "filtered", "preranked", "feed", "exploration")
WARM, COLD = "with_history", "without_history"
METRICS = ("recall", "ndcg", "recall_ceiling", "coverage", "ild", "category_entropy", "length")


def _funnel_part(cfg: PlatformConfig) -> str:
    """Mean candidates per user after each stage and from each channel, per strategy."""
    version = artifacts.current(registry.feed_store(cfg))
    path = version.path / "funnel.parquet" if version else None
    if path is None or not path.exists():
        return not_built("Funnel counts", FEEDS_HINT[1])
    funnel = pd.read_parquet(path)
    channels = [c for c in funnel if c.startswith("from_")]
    stages = [s for s in STAGES if s in funnel]
    means = funnel.groupby("strategy")[[*channels, *stages]].mean().T
    users = funnel.groupby("strategy").size()
    means.columns = [f"{s} ({users[s]} users)" for s in means.columns]
    means.index = [f"retrieved by {c.removeprefix('from_')}" if c in channels else c for c in means.index]
    table = means.reset_index(names="stage")
    return (f"<h3>Funnel of the current feeds ({version.meta.get('day', '')}, version {version.name}): "
            "mean candidates per user after each stage, per strategy</h3>" + html_table(table, [False] * len(table)))


def _mix_part(con: duckdb.DuckDBPyConnection) -> str:
    """Per strategy and segment: the share of feed slots each channel found (an item found by
    several channels counts for each), the exploration slots, and the feeds' diversity."""
    feeds = latest_day(con, "feeds")
    if feeds.empty:
        return not_built(*FEEDS_HINT)
    served = feeds.day.iloc[0]
    segments = (con.execute("select user_id, segment from int_user_day_segments where day = ?",
                            [served - pd.Timedelta(days=1)]).df()
                if "int_user_day_segments" in table_names(con) else pd.DataFrame(columns=["user_id", "segment"]))
    slots = feeds[["strategy", "user_id", "position", "channels", "decision"]]
    found = slots.assign(channel=slots.channels.str.split(",")).explode("channel")
    found.loc[found.decision == "exploration", "channel"] = "exploration"
    tagged = pd.concat([found.assign(segment=ALL), found.merge(segments, on="user_id")])
    n_slots = pd.concat([slots.assign(segment=ALL), slots.merge(segments, on="user_id")]).groupby(
        ["strategy", "segment"])
    mix = tagged.groupby(["strategy", "segment", "channel"]).size().unstack("channel", fill_value=0)
    mix = mix.div(n_slots.size(), axis=0)
    mix = mix[mix.loc[mix.index.get_level_values("segment") == ALL].mean().sort_values(ascending=False).index]
    mix.insert(0, "users", n_slots.user_id.nunique())
    mix = mix.rename_axis(columns=None).reset_index()
    categories = con.execute("select item_id, category_l1 from raw.items where item_id in (select item_id from feeds "
                             "where day = ?) qualify row_number() over (partition by item_id order by dt desc) = 1",
                             [served]).df()
    per_feed = feeds.merge(categories, on="item_id", how="left").groupby(["strategy", "user_id"]).agg(
        categories=("category_l1", "nunique"), exploration=("decision", lambda d: (d == "exploration").mean()),
        relaxed=("decision", lambda d: (d == "ranked, spacing relaxed").mean()))
    by_strategy = per_feed.groupby("strategy")
    items = pd.DataFrame({
        "users": by_strategy.size(), "distinct items": feeds.groupby("strategy").item_id.nunique(),
        "categories (l1) per feed": by_strategy.categories.mean(), "exploration share": by_strategy.exploration.mean(),
        "spacing relaxed share": by_strategy.relaxed.mean()}).reset_index()
    return (
        f"<h3>Channel mix of the final feeds for {served:%Y-%m-%d}, per segment (share of feed slots each channel "
        "found; an item found by several channels counts for each)</h3>"
        + mix.to_html(index=False, float_format=lambda v: f"{v:.1%}", border=0)
        + "<h3>Feeds: exploration and diversity</h3>" + html_table(items, [False] * len(items))
    )


@dataclass(frozen=True)
class FunnelTables:
    """funnel_eval's rows of one day and strategy, as tables; whats in `order`: feed, candidates,
    popularity, then the channels by Recall@<feed length> (segment all), best first."""

    k: int  # the feed length
    order: list[str]
    overall: pd.DataFrame  # per what, segment all: each metric at each K, and the users
    groups: pd.DataFrame  # Recall@k per what and user group, "<group> (<users>)" columns
    funnel: pd.DataFrame  # mean candidates per user after each stage, per user group
    checks: list[str]  # the goals with their numbers


def funnel_tables(rows: pd.DataFrame) -> FunnelTables:
    """The tables of one day's and strategy's funnel_eval rows."""
    k = int(rows[rows.what == "feed"].k.max())
    scored = rows[rows.what != "funnel"]
    recall = scored[(scored.metric == "recall") & (scored.k == k)]
    channels = recall[recall.what.str.startswith("channel:") & (recall.segment == ALL)]
    channels = channels.sort_values("value", ascending=False)
    order = [w for w in ("feed", "candidates", "popularity") if w in set(rows.what)] + list(channels.what)
    overall = scored[scored.segment == ALL]
    table = overall.pivot_table(index="what", columns=["metric", "k"], values="value")
    table = table[sorted(table.columns, key=lambda c: (METRICS.index(c[0]) if c[0] in METRICS else len(METRICS), c[1]))]
    table.columns = [f"{metric}@{kk}" for metric, kk in table.columns]
    table.insert(0, "users", overall.groupby("what").n_users.max())
    n = recall.groupby("segment").n_users.max()
    groups = recall.pivot_table(index="what", columns="segment", values="value", sort=False).reindex(order)
    groups.columns = [f"{g} ({n[g]})" for g in groups.columns]
    funnel = rows[rows.what == "funnel"].pivot_table(index="metric", columns="segment", values="value", sort=False)
    funnel = funnel.reindex([st for st in STAGES if st in funnel.index])
    funnel.columns = [f"{g} ({n.get(g, 0)})" for g in funnel.columns]
    value = recall.set_index(["what", "segment"]).value
    whole = overall[(overall.what == "candidates") & (overall.metric == "recall") & (overall.k > k)]
    checks = []
    if len(whole) and len(channels):
        best = channels.iloc[0]
        at_k = value.get(("candidates", ALL), float("nan"))
        checks.append(f"merged candidate set: Recall@{int(whole.k.iloc[0])} (the whole set) {whole.value.iloc[0]:.4f}, "
                      f"Recall@{k} by pre-rank {at_k:.4f}; best single channel {best.what} Recall@{k} {best.value:.4f}")
    for group in (WARM, COLD):
        if ("feed", group) in value.index and ("popularity", group) in value.index:
            checks.append(f"{group} ({n[group]} users): feed Recall@{k} {value['feed', group]:.4f} vs popularity "
                          f"{value['popularity', group]:.4f}")
    return FunnelTables(k, order, table.reindex(order), groups, funnel, checks)


def _groups_chart(recall: pd.DataFrame, whats: list[str], k: int, day: str) -> str:
    wide = recall.pivot_table(index="segment", columns="what", values="value", aggfunc="last")[whats]
    fig, ax = plt.subplots(figsize=(13, 3.8))
    wide.plot.bar(ax=ax, rot=0, xlabel="", title=f"Recall@{k} per user group, {day}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return embed_png(fig)


def _eval_part(con: duckdb.DuckDBPyConnection) -> str:
    ev = latest_day(con, "funnel_eval")
    if ev.empty:
        return not_built(*EVAL_HINT)
    day, parts = f"{ev.day.iloc[0]:%Y-%m-%d}", []
    for strategy, rows in ev.groupby("strategy"):
        t = funnel_tables(rows)
        recall = rows[(rows.metric == "recall") & (rows.k == t.k)]
        parts.append(
            f"<h3>Funnel evaluation, data through {day}, strategy {strategy}: the feeds for the next day scored on its "
            "clicks (candidates and channels ordered by pre-rank relevance)</h3>"
            + "<ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in t.checks) + "</ul>"
            + html_table(t.overall.reset_index(), [False] * len(t.overall))
            + f"<h3>Recall@{t.k} per user group (users), strategy {strategy}</h3>"
            + html_table(t.groups.reset_index(), [False] * len(t.groups))
            + _groups_chart(recall, t.order[:4], t.k, day)
            + f"<h3>Funnel of the evaluated users, strategy {strategy}: mean candidates per user after each stage</h3>"
            + html_table(t.funnel.reset_index(names="stage"), [False] * len(t.funnel))
        )
    return "".join(parts)


def serving_section(cfg: PlatformConfig) -> str:
    """The report's recommendation-path section, or "not built yet" per part."""
    parts = warehouse_parts(cfg, [("feeds", _mix_part, FEEDS_HINT), ("funnel_eval", _eval_part, EVAL_HINT)])
    return "<h2>Recommendation path</h2>" + _funnel_part(cfg) + "".join(parts)
