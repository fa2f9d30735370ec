"""The social section of the metrics report (docs/METHODS.md "Nightly report"): an HTML fragment.

`social_section(cfg)` reads kol_scores and implicit_follows from the warehouse (read-only) at
their latest day: the KOL score distribution (log scale) and the top 20 KOLs; implicit follows
per user and implicit vs explicit follow edges per day (interactive charts: tasks/reports/fragments.py).
A part whose table is not built yet says so; one whose table is empty (its last run found no rows)
says that.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.reports.fragments import histogram, html_table, latest_day, no_rows, time_chart, warehouse_parts

TOP_KOLS = 20
KOL_HINT = ("KOL scores", "run the kol_scoring DAG or `recpipe kol --day D`")
IMPLICIT_HINT = ("Implicit follows", "run the implicit_follows DAG or `recpipe implicit-follows --day D`")


def _score_histogram(scores: pd.Series, day: dt.date) -> str:
    """Histogram of the positive scores on log-spaced bins, log axes."""
    positive = scores[scores > 0]
    if positive.empty:
        return '<p class="muted">No share brought a visit in the window: every score is 0.</p>'
    return histogram(positive, f"KOL score distribution, {day} ({len(positive)} users with a score > 0)",
                     "KOL score (smoothed visits per share)", log=True)


def _kol_part(con: duckdb.DuckDBPyConnection) -> str:
    scores = latest_day(con, "kol_scores")
    if scores.empty:
        return no_rows(KOL_HINT[0])
    day = scores.day.max().date()
    top = scores.nlargest(TOP_KOLS, ["kol_score", "visits"])[
        ["user_id", "shares", "visits", "visits_per_share", "kol_score", "percentile", "is_kol"]
    ]
    return (
        f"<h3>KOLs, {day}</h3>"
        f"<p>{int(scores.is_kol.sum())} users flagged is_kol; {len(scores)} scored.</p>"
        f"{_score_histogram(scores.kol_score, day)}<h4>Top {TOP_KOLS} by KOL score</h4>"
        f"{html_table(top)}"
    )


def _explicit_per_day(con: duckdb.DuckDBPyConnection, days: list) -> pd.DataFrame:
    """Explicit follow edges at the end of each day (the latest action per pair decides; an
    unfollow wins a tie)."""
    con.register("report_days", pd.DataFrame({"day": days}))
    try:
        return con.execute(
            """
            with latest as (
                select d.day, f.action
                from report_days as d
                inner join raw.follows as f on f.dt <= cast(d.day as date)
                qualify row_number() over (
                    partition by d.day, f.user_id, f.author_id order by f.ts desc, f.action desc) = 1
            )
            select d.day, count(l.action) filter (where l.action = 'follow') as explicit
            from report_days as d left join latest as l using (day)
            group by d.day order by d.day
            """
        ).df()
    finally:
        con.unregister("report_days")


def _implicit_part(con: duckdb.DuckDBPyConnection) -> str:
    per_day = con.execute(
        "select day, count(*) as implicit, count(distinct user_id) as users from implicit_follows group by day order by day"
    ).df()
    if per_day.empty:
        return no_rows(IMPLICIT_HINT[0])
    day = per_day.day.max()
    per_user = con.execute("select user_id, count(*) as n from implicit_follows where day = ? group by user_id", [day]).df()
    counts = per_day.merge(_explicit_per_day(con, list(per_day.day)), on="day")
    edges = pd.concat([
        pd.DataFrame({"day": counts.day, "series": "implicit (user, author) pairs", "value": counts.implicit}),
        pd.DataFrame({"day": counts.day, "series": "explicit follow edges", "value": counts.explicit}),
    ])
    last = counts.iloc[-1]
    return (
        f"<h3>Implicit follows (U2A2I), {day.date()}</h3>"
        f"<p>{int(last.implicit)} implicit pairs for {int(last.users)} users vs {int(last.explicit)} explicit "
        "follow edges.</p>"
        + histogram(per_user.n, f"Implicit follows per user, {day.date()}", "implicit follows per user")
        + time_chart(edges, "Implicit vs explicit follows (edges)")
    )


def social_section(cfg: PlatformConfig) -> str:
    """The report's social section: KOLs and implicit follows, or "not built yet" per part."""
    parts = warehouse_parts(cfg, [("kol_scores", _kol_part, KOL_HINT),
                                  ("implicit_follows", _implicit_part, IMPLICIT_HINT)])
    return '<section id="social"><h2>Social: KOLs and implicit follows</h2>' + "".join(parts) + "</section>"
