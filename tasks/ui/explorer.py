"""The feed explorer (docs/METHODS.md "Airflow UI plugin"): one user's feed as the recommendation path
would serve it now, each item with its explanation, beside the user's recent history.

The feed comes from the online endpoint's `FeedServer` (tasks/serving/api.py): the serving context
of the artifacts current now and the data through the latest loaded day, loaded in the API server
on first use and reloaded when what is current moves (checked at each request), then
`recommend` — the same funnel as `recpipe recommend --explain` and `recpipe serve`. A user id
that is not an integer, or not a user of raw.users, is a client error (ExplorerError, 422 / 404).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.reports.fragments import html_table
from tasks.retrieval.data import connect_read
from tasks.serving.api import MAX_USER_ID, FeedServer

HISTORY_ROWS = 50
FEED_COLUMNS = ("position", "item_id", "channels", "score", "decision", "explanation")
TOP_TERMS = 3
_SERVERS: dict[tuple[str, str], FeedServer] = {}
_LOCK = threading.Lock()


class ExplorerError(Exception):
    """A request the explorer refuses: its HTTP status and the message shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Exploration:
    """One user's feed (the FeedServer's response, each item with an `explanation`) and history."""

    user_id: int
    feed: dict[str, Any]
    history: pd.DataFrame


def parse_user_id(text: str) -> int:
    """The user id typed in the form; ExplorerError(422) unless a non-negative 64-bit integer."""
    try:
        user_id = int(text.strip())
    except ValueError:
        raise ExplorerError(422, f"user id must be an integer, got {text!r}") from None
    if not 0 <= user_id <= MAX_USER_ID:
        raise ExplorerError(422, f"user id must be between 0 and {MAX_USER_ID}, got {user_id}")
    return user_id


def feed_server(cfg: PlatformConfig) -> FeedServer:
    """This process's FeedServer of `cfg`'s data, its context current (loaded or reloaded now if
    what is current moved since the last request); one at a time."""
    key = (str(cfg.warehouse_path), str(cfg.artifacts_dir))
    with _LOCK:
        server = _SERVERS.get(key) or _SERVERS.setdefault(key, FeedServer(cfg))
        server.check()
    return server


def known_user(cfg: PlatformConfig, user_id: int) -> bool:
    """Whether raw.users has the user."""
    with connect_read(cfg) as con:
        return con.execute("select count(*) from raw.users where user_id = ?", [user_id]).fetchone()[0] > 0


def user_history(cfg: PlatformConfig, user_id: int, through: dt.date, limit: int = HISTORY_ROWS) -> pd.DataFrame:
    """The user's latest `limit` item events (impressions, clicks, likes, ...) through `through`,
    newest first, with the item's categories."""
    with connect_read(cfg) as con:
        return con.execute(
            """
            select e.ts, e.event_type, e.item_id, i.category_l1, i.category_l2, e.dwell_ms, e.position
            from raw.events as e left join raw.items as i using (item_id)
            where e.user_id = ? and e.item_id is not null and e.dt <= ?
            order by e.ts desc, e.event_id desc
            limit ?
            """, [user_id, through, limit]).df()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def explanation(item: dict[str, Any]) -> str:
    """Why the item is at its position, from the funnel's columns: its score as the sum of its
    largest fusion terms (w_<head> = weight x predicted head, bonus_<name>), or the exploration pool
    it was drawn from."""
    if item.get("decision") == "exploration":
        return f"exploration slot: an unseen item drawn at random from pool {item.get('channels')}"
    terms = {k: v for k, v in item.items() if k.startswith(("w_", "bonus_")) and _number(v) is not None}
    top = sorted(terms.items(), key=lambda kv: -abs(kv[1]))[:TOP_TERMS]
    rest = len(terms) - len(top)
    score = _number(item.get("score"))
    why = (" + ".join(f"{k} {v:.3g}" for k, v in top) + (f" + {rest} smaller terms" if rest else "") if top
           else f"no ranker term: ordered by the pre-rank score {_number(item.get('prerank')) or 0:.3g}")
    spacing = "; category/cluster spacing relaxed to fill the feed" if "relaxed" in str(item.get("decision")) else ""
    return f"score {score or 0:.3g} = {why}{spacing}"


def explore(cfg: PlatformConfig, user_id: int, strategy: str | None = None) -> Exploration:
    """The user's feed with explanations, and their history through the served context's data day;
    ExplorerError(404) for a user raw.users does not have."""
    if not known_user(cfg, user_id):
        raise ExplorerError(404, f"unknown user {user_id}: not in raw.users (the loaded data has no such user)")
    feed = feed_server(cfg).feed(user_id, None, strategy, explain=True)
    feed["items"] = [item | {"explanation": explanation(item)} for item in feed["items"]]
    through = dt.date.fromisoformat(feed["day"]) - dt.timedelta(days=1)
    return Exploration(user_id, feed, user_history(cfg, user_id, through))


def as_json(ex: Exploration) -> dict[str, Any]:
    """The explorer's JSON response: the feed (every funnel column) and the history."""
    history = ex.history.assign(ts=ex.history.ts.astype(str)).astype(object)
    return {**ex.feed, "history": history.where(history.notna(), None).to_dict(orient="records")}


def _funnel_line(funnel: dict[str, Any] | None) -> str:
    if not funnel:
        return ""
    stages = " → ".join(f"{stage} {funnel[stage]:,}" for stage in ("retrieved", "merged", "filtered", "preranked",
                                                                 "feed") if stage in funnel)
    return f"<p class='muted'>Candidates after each stage: {stages} ({funnel.get('exploration', 0)} exploration).</p>"


def render(ex: Exploration) -> str:
    """The feed table (FEED_COLUMNS, channels comma-spaced) and, beside it, the history table."""
    feed = pd.DataFrame(ex.feed["items"]).reindex(columns=list(FEED_COLUMNS))
    feed["channels"] = feed.channels.str.replace(",", ", ")
    versions = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in ex.feed["versions"].items())
    history = ex.history.assign(ts=ex.history.ts.dt.strftime("%Y-%m-%d %H:%M:%S")) if len(ex.history) else None
    return (
        f"<p>Feed of user <b>{ex.user_id}</b> for {html.escape(ex.feed['day'])}, strategy "
        f"{html.escape(ex.feed['strategy'])}.</p>{_funnel_line(ex.feed.get('funnel'))}"
        f"<details><summary>model versions served</summary><ul>{versions or '<li>none</li>'}</ul></details>"
        "<div class='columns'>"
        f"<div id='feed'><h2>Feed ({len(feed)} items)</h2>{html_table(feed, [False] * len(feed))}</div>"
        f"<div id='history'><h2>Recent history (latest {HISTORY_ROWS} item events)</h2>"
        + (html_table(history, history.event_type != "impression") if history is not None
           else "<p class='muted'>No events: a new user (the feed is the cold-start one).</p>")
        + "<p class='muted'>Highlighted: engagements (clicks, likes, ...); the rest are impressions.</p></div></div>"
    )
