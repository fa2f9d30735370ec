"""The raw event contract: the four tables a batch may carry, their columns, types and rules.

This module is the single source of truth for the contract. The loader validates against it,
the simulator writes it, and docs/CONTRACT.md documents it (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

EVENT_TYPES: tuple[str, ...] = (
    "session_start",
    "session_end",
    "impression",
    "click",
    "like",
    "favorite",
    "share",
    "comment",
    "follow",
    "publish",
    "offsite_visit",
)
# events.channel of an impression the closed loop filled with the organic policy, beyond a served feed
# (exploration slots carry their pool's name): with null, the labels of exposures no model chose.
FILL_CHANNEL = "organic_fill"
# Event types that are about one item: item_id must be set.
ITEM_EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "click",
    "like",
    "favorite",
    "share",
    "comment",
    "publish",
    "offsite_visit",
)
FOLLOW_ACTIONS: tuple[str, ...] = ("follow", "unfollow")
GENDERS: tuple[str, ...] = ("f", "m", "u")
AGE_BUCKETS: tuple[str, ...] = ("<18", "18-24", "25-34", "35-44", "45+", "unknown")


@dataclass(frozen=True)
class Column:
    """One contract column: name, DuckDB type, and whether it may be null."""

    name: str
    sql_type: str
    nullable: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Table:
    """One contract table: its columns, its primary key and its timestamp column."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    ts_column: str
    doc: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        """The Parquet schema the lake stores this table with."""
        return pa.schema(
            [pa.field(c.name, _ARROW_TYPES[c.sql_type], nullable=c.nullable) for c in self.columns]
        )


_ARROW_TYPES: dict[str, pa.DataType] = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "VARCHAR": pa.string(),
    "TIMESTAMP": pa.timestamp("us"),
}

USERS = Table(
    name="users",
    doc="One row per user, delivered in the batch of the day the user signed up (or a first full dump).",
    key=("user_id",),
    ts_column="signup_ts",
    columns=(
        Column("user_id", "BIGINT", doc="Unique user id."),
        Column("signup_ts", "TIMESTAMP", doc="When the account was created (UTC)."),
        Column("gender", "VARCHAR", doc="One of " + ", ".join(GENDERS) + " (u = unknown)."),
        Column("age_bucket", "VARCHAR", doc="One of " + ", ".join(AGE_BUCKETS) + "."),
        Column("city_tier", "INTEGER", doc="1 (largest cities) .. 5; 0 = unknown."),
        Column("country", "VARCHAR", nullable=True, doc="ISO 3166 alpha-2 code, optional."),
    ),
)

ITEMS = Table(
    name="items",
    doc="One row per item (video), delivered in the batch of the day it was published.",
    key=("item_id",),
    ts_column="publish_ts",
    columns=(
        Column("item_id", "BIGINT", doc="Unique item id."),
        Column("author_id", "BIGINT", doc="The user who published it (must be a known user_id)."),
        Column("category_l1", "VARCHAR", doc="First-level category."),
        Column("category_l2", "VARCHAR", doc="Second-level category (unique across all l1)."),
        Column("content_cluster", "INTEGER", doc="Content cluster id (clustering of content vectors)."),
        Column("publish_ts", "TIMESTAMP", doc="When it was published (UTC)."),
        Column("duration_ms", "BIGINT", nullable=True, doc="Video length in milliseconds, >= 0."),
        Column("expire_ts", "TIMESTAMP", nullable=True, doc="When it stops being recommendable, if ever."),
    ),
)

FOLLOWS = Table(
    name="follows",
    doc="Follow-graph changes: one row per follow or unfollow action.",
    key=("user_id", "author_id", "ts", "action"),
    ts_column="ts",
    columns=(
        Column("user_id", "BIGINT", doc="The follower."),
        Column("author_id", "BIGINT", doc="The followed author (a known user_id)."),
        Column("ts", "TIMESTAMP", doc="When the action happened (UTC)."),
        Column("action", "VARCHAR", doc="follow or unfollow."),
    ),
)

EVENTS = Table(
    name="events",
    doc="The behaviour log: one row per event.",
    key=("event_id",),
    ts_column="ts",
    columns=(
        Column("event_id", "BIGINT", doc="Unique event id (unique across all days)."),
        Column("ts", "TIMESTAMP", doc="When it happened (UTC); decides the day partition."),
        Column("user_id", "BIGINT", doc="The acting user (a known user_id)."),
        Column("session_id", "BIGINT", doc="App session; a user with any event is active that day."),
        Column(
            "item_id",
            "BIGINT",
            nullable=True,
            doc="The item; required for " + ", ".join(ITEM_EVENT_TYPES) + "; null for session events.",
        ),
        Column("event_type", "VARCHAR", doc="One of " + ", ".join(EVENT_TYPES) + "."),
        Column(
            "dwell_ms",
            "BIGINT",
            nullable=True,
            doc="Watch time of a click, or session length on session_end; >= 0.",
        ),
        Column("experiment_bucket", "VARCHAR", doc="A/B bucket of the user, e.g. control."),
        Column(
            "referrer_user_id",
            "BIGINT",
            nullable=True,
            doc="offsite_visit only: the user whose shared link brought the visit (required there).",
        ),
        Column("position", "INTEGER", nullable=True, doc="Slot of an impression in the feed, optional."),
        Column(
            "strategy",
            "VARCHAR",
            nullable=True,
            doc="The serving strategy of an impression served by recpipe; null otherwise.",
        ),
        Column(
            "channel",
            "VARCHAR",
            nullable=True,
            doc="The retrieval channel(s) of an impression served by recpipe; null otherwise.",
        ),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (USERS, ITEMS, FOLLOWS, EVENTS)}
# Load order inside a batch: referenced ids (users, items) come before the rows that reference them.
LOAD_ORDER: tuple[str, ...] = ("users", "items", "follows", "events")

# Why a row was quarantined. Every invalid row gets exactly one reason: the first that applies,
# in this order, and a message naming the file, the row and the field.
QUARANTINE_REASONS: dict[str, str] = {
    "unparseable_row": "the line could not be parsed (wrong number of fields, bad quoting)",
    "wrong_type": "a value does not parse as the column's type",
    "null_key": "a required column (key or not-nullable field) is null",
    "invalid_value": "a value outside its allowed set or range (gender, action, city_tier, ...)",
    "unknown_event_type": "event_type is not one of the contract's event types",
    "missing_item_id": "an item event without item_id, or an offsite_visit without referrer_user_id",
    "negative_dwell": "dwell_ms (or duration_ms) is negative",
    "ts_in_future": "the timestamp is later than the load time",
    "ts_outside_batch_day": "the timestamp is not on the batch's day",
    "duplicate_key": "the key repeats inside the batch or is already in the lake from another batch",
    "unknown_user": "user_id / author_id / referrer_user_id is not a known user",
    "unknown_item": "item_id is not a known item",
}
