"""The validation rules of the contract as SQL snippets, in QUARANTINE_REASONS priority order.

Every snippet is built from contract names and constants only (never from file content). A rule's
`when` is a condition over the typed columns of one row (raw, uncast values are `_raw_<column>`);
its `detail` is the SQL expression that ends the quarantine message. Rules that need other rows
(duplicates, references) are built by tasks.ingest.validate, which knows what the lake holds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tasks.core.contract import (
    AGE_BUCKETS,
    EVENT_TYPES,
    FOLLOW_ACTIONS,
    GENDERS,
    ITEM_EVENT_TYPES,
    QUARANTINE_REASONS,
    TABLES,
    Table,
)

# Columns that name a user / an item, per table (checked against the lake and the batch).
USER_REFS: dict[str, tuple[str, ...]] = {
    "users": (),
    "items": ("author_id",),
    "follows": ("user_id", "author_id"),
    "events": ("user_id", "referrer_user_id"),
}
ITEM_REFS: dict[str, tuple[str, ...]] = {"users": (), "items": (), "follows": (), "events": ("item_id",)}


@dataclass(frozen=True)
class Rule:
    """One way a row can fail: its reason code, the field named, the condition and message tail.

    `when` is empty for the rules tasks.ingest.validate checks with joins (duplicates, references).
    """

    reason: str
    field: str
    when: str
    detail: str

    def __post_init__(self) -> None:
        assert self.reason in QUARANTINE_REASONS, self.reason


def ident(name: str) -> str:
    """A quoted SQL identifier for a contract name."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """A SQL string literal for a contract constant."""
    return "'" + value.replace("'", "''") + "'"


def ts_lit(value: dt.datetime) -> str:
    """A SQL TIMESTAMP literal (naive UTC)."""
    return f"TIMESTAMP '{value.replace(tzinfo=None).isoformat(sep=' ')}'"


def date_lit(value: dt.date) -> str:
    """A SQL DATE literal."""
    return f"DATE '{value.isoformat()}'"


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(lit(v) for v in values) + ")"


def _enum(column: str, values: tuple[str, ...]) -> Rule:
    c = ident(column)
    listing = lit(", ".join(values))
    return Rule(
        "invalid_value",
        column,
        f"{c} NOT IN {_in(values)}",
        f"format('{{}} is not one of {{}}', to_json({c}), {listing})",
    )


def _not_blank(column: str) -> Rule:
    c = ident(column)  # the cheap comparison first: trim() only runs on rare candidates
    return Rule("invalid_value", column, f"({c} < '!' AND trim({c}) = '')", "'empty value'")


def _negative(column: str, reason: str, what: str) -> Rule:
    c = ident(column)
    return Rule(reason, column, f"{c} < 0", f"format('negative {what} ({{}})', {c})")


def wrong_type_rule(table: Table, column: str) -> Rule:
    """The value was present but did not cast to the column's type."""
    sql_type = next(c.sql_type for c in table.columns if c.name == column)
    raw = ident(f"_raw_{column}")
    return Rule(
        "wrong_type",
        column,
        f"{raw} IS NOT NULL AND {ident(column)} IS NULL",
        f"format('{{}} is not a {sql_type}', to_json({raw}))",
    )


def date_only_rule(column: str) -> Rule:
    """A TIMESTAMP given as a date alone (text without a time of day, or a Parquet DATE): the
    contract's timestamps are date-times."""
    raw = f"CAST({ident(f'_raw_{column}')} AS VARCHAR)"
    return Rule(
        "wrong_type",
        column,
        rf"{ident(column)} IS NOT NULL AND NOT regexp_matches({raw}, '\d[T ]+\d{{1,2}}:\d{{2}}')",
        f"format('{{}} is a date without a time of day, not a TIMESTAMP (YYYY-MM-DD HH:MM:SS)', to_json({raw}))",
    )


def null_rules(table: Table) -> list[Rule]:
    """Every not-nullable column must be set."""
    return [
        Rule("null_key", c.name, f"{ident(c.name)} IS NULL", "'required value is missing'")
        for c in table.columns
        if not c.nullable
    ]


def _value_rules(table: str) -> list[Rule]:
    if table == "users":
        return [
            _enum("gender", GENDERS),
            _enum("age_bucket", AGE_BUCKETS),
            Rule(
                "invalid_value",
                "city_tier",
                '"city_tier" NOT BETWEEN 0 AND 5',
                "format('{} is not in 0..5', \"city_tier\")",
            ),
            Rule(
                "invalid_value",
                "country",
                "NOT regexp_full_match(\"country\", '[A-Z]{2}')",
                "format('{} is not an ISO 3166 alpha-2 code', to_json(\"country\"))",
            ),
        ]
    if table == "items":
        return [
            _not_blank("category_l1"),
            _not_blank("category_l2"),
            Rule(
                "invalid_value",
                "content_cluster",
                '"content_cluster" < 0',
                "format('negative content cluster ({})', \"content_cluster\")",
            ),
            Rule(
                "invalid_value",
                "expire_ts",
                '"expire_ts" < "publish_ts"',
                'format(\'expires ({}) before it is published ({})\', "expire_ts", "publish_ts")',
            ),
        ]
    if table == "follows":
        return [
            _enum("action", FOLLOW_ACTIONS),
            Rule(
                "invalid_value",
                "author_id",
                '"author_id" = "user_id"',
                "format('user {} follows themself', \"user_id\")",
            ),
        ]
    return [
        _not_blank("experiment_bucket"),
        Rule("invalid_value", "position", '"position" < 0', "format('negative position ({})', \"position\")"),
        Rule(
            "unknown_event_type",
            "event_type",
            f'"event_type" NOT IN {_in(EVENT_TYPES)}',
            "format('unknown event type {}', to_json(\"event_type\"))",
        ),
        Rule(
            "missing_item_id",
            "item_id",
            f'"item_id" IS NULL AND "event_type" IN {_in(ITEM_EVENT_TYPES)}',
            "format('{} event without item_id', \"event_type\")",
        ),
        Rule(
            "missing_item_id",
            "referrer_user_id",
            '"event_type" = \'offsite_visit\' AND "referrer_user_id" IS NULL',
            "'offsite_visit without referrer_user_id'",
        ),
        _negative("dwell_ms", "negative_dwell", "dwell"),
    ]


def row_rules(table: str, cast_columns: list[str], now: dt.datetime, day: dt.date | None) -> list[Rule]:
    """The single-row rules of `table`, in priority order (wrong_type .. ts_outside_batch_day)."""
    t = TABLES[table]
    rules = [wrong_type_rule(t, c) for c in cast_columns]
    rules += [date_only_rule(c.name) for c in t.columns if c.sql_type == "TIMESTAMP" and c.name in cast_columns]
    rules += null_rules(t)
    rules += _value_rules(table)
    if table == "items":
        rules.append(_negative("duration_ms", "negative_dwell", "duration"))
    ts = ident(t.ts_column)
    rules.append(
        Rule(
            "ts_in_future",
            t.ts_column,
            f"{ts} > {ts_lit(now)}",
            f"format('{{}} is later than the load time', {ts})",
        )
    )
    if day is not None:
        end = date_lit(day + dt.timedelta(days=1))
        if table in ("users", "items"):  # first full dumps may carry earlier signups / publishes
            when, what = f"{ts} >= {end}", "after the batch day"
        else:
            when, what = f"({ts} < {date_lit(day)} OR {ts} >= {end})", "not on the batch day"
        rules.append(
            Rule(
                "ts_outside_batch_day",
                t.ts_column,
                when,
                f"format('{{}} is {what} {{}}', {ts}, {date_lit(day)})",
            )
        )
    return rules


def key_repr(table: str) -> str:
    """SQL for 'col=value, ...' over the key columns of `table`."""
    key = TABLES[table].key
    parts = ", ".join(f"{k}={{}}" for k in key)
    return f"format('{parts}', " + ", ".join(ident(k) for k in key) + ")"
