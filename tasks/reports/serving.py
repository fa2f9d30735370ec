"""The recommendation-path section of the nightly report, as an HTML fragment.

`serving_section(cfg)` reads the current feeds artifact's funnel.parquet (candidates per user after
each stage and per channel, per strategy), the `feeds` table's latest day (the channel mix of the
final feeds per segment; exploration share, spacing relaxed share, distinct items and categories per
strategy) and `funnel_eval` (the offline funnel evaluation: for the latest day's last run per
strategy, Recall@<feed length> with the users scored and its 95% CI where the rows carry ci_low /
ci_high, the feed next to its merged candidates, popularity and each channel, per user group, its
diversity measures; then Recall@<feed length> of the feed, the candidates and popularity over every
day's last run). A part not built yet says so.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import duckdb
import pandas as pd

from tasks.core import artifacts, registry
from tasks.core.config import ALL, PlatformConfig
from tasks.core.warehouse import table_names
from tasks.reports.fragments import (
    FEW_USERS,
    FINAL,
    bar_chart,
    ci_text,
    few_users,
    few_users_note,
    has_ci,
    html_table,
    latest_day,
    no_rows,
    not_built,
    time_chart,
    warehouse_parts,
)

FEEDS_HINT = ("Feeds", "run the feeds DAG: `recpipe feeds --day D`")
EVAL_HINT = ("Funnel evaluation", "run `recpipe evaluate --day D --funnel`")
STAGES = ("retrieved", "merged", "filtered", "preranked", "feed", "exploration")
WARM, COLD = "with_history", "without_history"
HISTORY_WHATS = ("candidates", "popularity")  # drawn next to the feed in the history
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
        + html_table(mix.assign(**{c: mix[c].map(lambda v: f"{v:.1%}") for c in mix.columns[3:]}))
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
    rows = recall[recall.what.isin(whats)].assign(order=lambda r: r.what.map(whats.index)).sort_values("order")
    return bar_chart(rows[["segment", "what", "value", "n_users"]], "segment", "value",
                     f"Recall@{k} per user group, {day}", group="what", value_title=f"Recall@{k}",
                     tooltip=["n_users:Q"])


def _ci_table(rows: pd.DataFrame, t: FunnelTables) -> str:
    """Recall@k of each what (segment all) with the users scored and, where the rows carry one, its 95% CI
    (highlighted: fewer users than evaluation.min_users)."""
    recall = rows[(rows.metric == "recall") & (rows.k == t.k) & (rows.segment == ALL)]
    recall = recall.set_index("what").reindex(t.order)
    table = pd.DataFrame({"what": t.order, f"recall@{t.k}": recall.value.to_numpy(),
                          "users": recall.n_users.to_numpy()})
    if has_ci(recall):
        table["95% CI"] = ci_text(recall.ci_low, recall.ci_high)
    return html_table(table, few_users(recall).to_numpy())


def _history(ev: pd.DataFrame) -> str:
    """Recall@<feed length> of the feed, the merged candidates and popularity (segment all) per
    day's last run, the run's settings (when stored) in the tooltip."""
    strategies = ev.strategy.nunique()
    feed_k = ev[ev.what == "feed"].groupby(["day", "strategy"], as_index=False).k.max()
    rows = ev[ev.what.isin(("feed", *HISTORY_WHATS)) & (ev.metric == "recall") & (ev.segment == ALL)]
    rows = rows.merge(feed_k, on=["day", "strategy", "k"])
    settings = [c for c in ("eval_days", "train_window_days") if c in rows]
    points = pd.DataFrame({
        "day": rows.day, "value": rows.value, "users": rows.n_users, "evaluated_at": rows.evaluated_at, "k": rows.k,
        **{c: rows[c] for c in settings}, "status": few_users(rows).map({False: FINAL, True: FEW_USERS}),
        "series": [f"{w} ({s})" if strategies > 1 else w for w, s in zip(rows.what, rows.strategy)]})
    if has_ci(rows):
        points = points.assign(low=rows.ci_low, high=rows.ci_high)
    return time_chart(points.sort_values("evaluated_at"),
                      "Recall@<feed length> per funnel evaluation run, segment all (x: data through)",
                      apart=FEW_USERS, tooltip=["k", "users", "evaluated_at", *settings])


def _eval_part(con: duckdb.DuckDBPyConnection) -> str:
    ev = con.execute("select * from funnel_eval").df()
    if ev.empty:
        return no_rows(EVAL_HINT[0])
    ev = ev[ev.evaluated_at == ev.groupby(["day", "strategy"]).evaluated_at.transform("max")]  # a day's last run
    last = ev[ev.day == ev.day.max()]
    day, parts = f"{last.day.iloc[0]:%Y-%m-%d}", []
    for strategy, rows in last.groupby("strategy"):
        t = funnel_tables(rows)
        recall = rows[(rows.metric == "recall") & (rows.k == t.k)]
        parts.append(
            f"<h3>Funnel evaluation, data through {day}, strategy {strategy}: the feeds for the next day scored on its "
            "clicks (candidates and channels ordered by pre-rank relevance)</h3>"
            + "<ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in t.checks) + "</ul>"
            + few_users_note(rows[rows.what != "funnel"])
            + _ci_table(rows, t)
            + html_table(t.overall.reset_index())
            + f"<h3>Recall@{t.k} per user group (users), strategy {strategy}</h3>"
            + html_table(t.groups.reset_index())
            + _groups_chart(recall, t.order[:4], t.k, day)
            + f"<h3>Funnel of the evaluated users, strategy {strategy}: mean candidates per user after each stage</h3>"
            + html_table(t.funnel.reset_index(names="stage"))
        )
    return "".join(parts) + "<h3>Funnel evaluation history</h3>" + _history(ev)


def serving_section(cfg: PlatformConfig) -> str:
    """The report's recommendation-path section, or "not built yet" per part."""
    parts = warehouse_parts(cfg, [("feeds", _mix_part, FEEDS_HINT), ("funnel_eval", _eval_part, EVAL_HINT)])
    return "<h2>Recommendation path</h2>" + _funnel_part(cfg) + "".join(parts)
