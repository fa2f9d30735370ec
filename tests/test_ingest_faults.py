"""Faults a reviewer planted in real batches: bytes that are not UTF-8 (in a row, in the header) and
batches whose tables come in different formats. Expectations are counted from what each test
writes, never taken from the loader."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.config import PlatformConfig
from tasks.core.contract import LOAD_ORDER, TABLES
from tasks.ingest.batch import BatchError
from tasks.ingest.load import load_batch
from tasks.ops.alerts import read_alerts

NOW = dt.datetime(2026, 6, 1)
T = dt.datetime(2026, 1, 3, 9)
USERS_HEADER = b"user_id,signup_ts,gender,age_bucket,city_tier,country\n"


def lake_rows(cfg: PlatformConfig, table: str) -> list[dict]:
    return [r for f in sorted((cfg.lake_dir / table).glob("dt=*/*.parquet")) for r in pq.read_table(f).to_pylist()]


def quarantine(cfg: PlatformConfig) -> dict[tuple[str, int], dict]:
    return {(r["table_name"], r["row_number"]): r for r in lake_rows(cfg, "quarantine")}


def test_csv_rows_that_are_not_utf8_are_quarantined_and_the_rest_loads(platform: PlatformConfig) -> None:
    """A byte-order mark, then rows 2, 4 and 6 with undecodable bytes (row 6 after a valid 2-byte letter)."""
    rows = [
        b"1,2026-01-03 08:00:00,f,18-24,2,DE\n",
        b"2,2026-01-03 08:00:00,\xff,18-24,1,DE\n",
        b"3,2026-01-03 08:00:00,m,25-34,1,FR\n",
        b"4,2026-01-03 08:00:00,f,45+,3,D\xc3\n",
        b"5,2026-01-03 08:00:00,u,unknown,0,\n",
        b"6,2026-01-03 08:00:00,u,unknown,0,\xc3\x9c\xff\n",
        b"7,2026-01-03 08:00:00,m,<18,4,US\n",
    ]
    corrupt = {2: (b"\xff", "gender"), 4: (b"\xc3\n", "country"), 6: (b"\xff", "country")}
    data = b"\xef\xbb\xbf" + USERS_HEADER + b"".join(rows)
    offsets = {n: data.index(rows[n - 1]) + rows[n - 1].index(bad) for n, (bad, _) in corrupt.items()}
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    (batch / "users.csv").write_bytes(data)

    result = load_batch(batch, platform, now=NOW)

    counts = result.tables["users"]
    assert (counts.input, counts.valid, counts.quarantined) == (7, 4, {"unparseable_row": 3})
    assert sorted(u["user_id"] for u in lake_rows(platform, "users")) == [1, 3, 5, 7]
    got = quarantine(platform)
    assert set(got) == {("users", n) for n in corrupt}
    for n, (_, field) in corrupt.items():
        r = got[("users", n)]
        assert (r["reason"], r["field"], r["line_number"]) == ("unparseable_row", field, n + 1)
        assert r["message"] == (
            f"landing/dt=2026-01-03/users.csv row {n} (line {n + 1}), field {field}: "
            f"unparseable row: not valid UTF-8 at byte {offsets[n]}"
        )
    assert json.loads(got[("users", 6)]["raw_record"]) == "6,2026-01-03 08:00:00,u,unknown,0,Ü\\xff"


def test_csv_header_that_is_not_utf8_rejects_the_file(platform: PlatformConfig) -> None:
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    header = USERS_HEADER.replace(b"gender", b"g\xe9nder")
    (batch / "users.csv").write_bytes(header + b"1,2026-01-03,f,<18,1,\n")
    bad_byte = header.index(b"\xe9")
    with pytest.raises(BatchError) as raised:
        load_batch(batch, platform, now=NOW)
    message = str(raised.value)
    assert message.startswith(f"{batch / 'users.csv'}: the header row is not valid UTF-8 at byte {bad_byte}")
    assert "save the file as UTF-8" in message
    assert not platform.lake_dir.exists()
    (alert,) = read_alerts(platform)
    assert alert["severity"] == "critical" and "users.csv" in alert["title"]


# One batch, every table with one or two bad rows that either format can carry.
ROWS: dict[str, list[dict]] = {
    "users": [
        {"user_id": u, "signup_ts": T, "gender": g, "age_bucket": "18-24", "city_tier": 1, "country": "DE"}
        for u, g in [(1, "f"), (2, "m"), (3, "x"), (4, "u")]
    ],
    "items": [
        {"item_id": i, "author_id": a, "category_l1": "music", "category_l2": "music/pop",
         "content_cluster": c, "publish_ts": T, "duration_ms": 1000, "expire_ts": None}
        for i, a, c in [(10, 1, 7), (11, 2, -1), (12, 99, 7), (13, 4, 7)]
    ],
    "follows": [
        {"user_id": u, "author_id": a, "ts": T, "action": act}
        for u, a, act in [(1, 2, "follow"), (2, 1, "like"), (4, 1, "follow")]
    ],
    "events": [
        {"event_id": e, "ts": T, "user_id": u, "session_id": 100, "item_id": 10, "event_type": "click",
         "dwell_ms": d, "experiment_bucket": "control", "referrer_user_id": None, "position": 0}
        for e, u, d in [(1, 1, 10), (2, 1, -5), (3, 2, 10), (4, 3, 10), (5, 4, 10)]
    ],
}
BAD_ROWS = {
    ("users", 3): ("invalid_value", "gender"),
    ("items", 2): ("invalid_value", "content_cluster"),
    ("items", 3): ("unknown_user", "author_id"),
    ("follows", 2): ("invalid_value", "action"),
    ("events", 2): ("negative_dwell", "dwell_ms"),
    ("events", 4): ("unknown_user", "user_id"),  # user 3 is quarantined
}


def write_table(folder: Path, table: str, fmt: str) -> None:
    """Write ROWS[table] as CSV, or as Parquet with inferred types (int64 where the contract has
    INTEGER: those tables take the converting path, follows the as-is path)."""
    rows = ROWS[table]
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{table}.parquet")
        return
    cells = [["" if v is None else str(v) for v in r.values()] for r in rows]
    (folder / f"{table}.csv").write_text("\n".join(",".join(c) for c in [list(rows[0]), *cells]) + "\n")


@pytest.mark.parametrize(
    "formats",
    [
        ("csv", "csv", "csv", "csv"),
        ("parquet", "parquet", "parquet", "parquet"),
        ("csv", "parquet", "csv", "parquet"),
        ("parquet", "csv", "parquet", "csv"),
    ],
    ids="-".join,
)
def test_tables_in_any_mix_of_formats_quarantine_alike(platform: PlatformConfig, formats: tuple[str, ...]) -> None:
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    for table, fmt in zip(LOAD_ORDER, formats, strict=True):
        write_table(batch, table, fmt)

    result = load_batch(batch, platform, now=NOW)

    got = quarantine(platform)
    assert {k: (r["reason"], r["field"]) for k, r in got.items()} == BAD_ROWS
    for (table, row), r in got.items():
        fmt = formats[LOAD_ORDER.index(table)]
        assert r["message"].startswith(f"landing/dt=2026-01-03/{table}.{fmt} row {row}, field ")
        assert r["line_number"] == (row + 1 if fmt == "csv" else None)
    for table in LOAD_ORDER:
        bad = {row for t, row in BAD_ROWS if t == table}
        key = TABLES[table].key[0]
        good = [r[key] for n, r in enumerate(ROWS[table], 1) if n not in bad]
        counts = result.tables[table]
        assert (counts.input, counts.valid, counts.quarantined_total) == (len(ROWS[table]), len(good), len(bad))
        assert sorted(r[key] for r in lake_rows(platform, table)) == sorted(good)


def test_csv_row_faults_next_to_a_parquet_table(platform: PlatformConfig) -> None:
    """The reviewer's batch: users.csv with an undecodable row and a short row, items.parquet with a bad row."""
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    (batch / "users.csv").write_bytes(
        USERS_HEADER
        + b"1,2026-01-03 08:00:00,f,18-24,2,DE\n"
        + b"2,2026-01-03 08:00:00,m,25-34,1,DE\n"
        + b"3,2026-01-03 08:00:00,f,18-24\n"
        + b"4,2026-01-03 08:00:00,f,18-24,2,\x80\n"
    )
    write_table(batch, "items", "parquet")  # items 11 and 12 bad; item 13's author 4 is a quarantined user

    result = load_batch(batch, platform, now=NOW)

    got = {k: r["reason"] for k, r in quarantine(platform).items()}
    assert got == {
        ("users", 3): "unparseable_row",
        ("users", 4): "unparseable_row",
        ("items", 2): "invalid_value",
        ("items", 3): "unknown_user",
        ("items", 4): "unknown_user",
    }
    assert {t: (c.input, c.valid) for t, c in result.tables.items()} == {"users": (4, 2), "items": (4, 1)}
    assert [r["item_id"] for r in lake_rows(platform, "items")] == [10]


def test_two_files_for_one_table_is_a_file_error_that_says_what_to_do(platform: PlatformConfig) -> None:
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    write_table(batch, "users", "csv")
    write_table(batch, "users", "parquet")
    with pytest.raises(BatchError, match=r"users\.parquet: table users is also in users\.csv; remove one"):
        load_batch(batch, platform, now=NOW)
    assert not platform.lake_dir.exists()


@pytest.mark.parametrize("exact_types", [True, False], ids=["as-is", "converted"])
def test_parquet_text_that_is_not_utf8_is_quarantined_by_row(platform: PlatformConfig, exact_types: bool) -> None:
    """Rows 2 and 3 hold text that is not UTF-8; with contract types the file is taken as it is,
    otherwise DuckDB converts it: either way those two rows, and only they, are quarantined."""
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    write_table(batch, "users", "csv")
    l1 = [b"music", b"m\xc3sic", b"music", b"food"]
    l2 = [b"music/pop", b"music/pop", b"music/\xff", b"food/street"]
    items = {
        "item_id": [10, 11, 12, 13],
        "author_id": [1, 1, 2, 2],
        "category_l1": pa.array(l1, pa.binary()).view(pa.string()),
        "category_l2": pa.array(l2, pa.binary()).view(pa.string()),
        "content_cluster": [7, 7, 7, 7],
        "publish_ts": [T] * 4,
    }
    schema = pa.schema([TABLES["items"].arrow_schema().field(c) for c in items]) if exact_types else None
    pq.write_table(pa.table(items, schema=schema), batch / "items.parquet")

    result = load_batch(batch, platform, now=NOW)

    counts = result.tables["items"]
    assert (counts.input, counts.valid, counts.quarantined) == (4, 2, {"unparseable_row": 2})
    got = {row: r for (table, row), r in quarantine(platform).items() if table == "items"}
    assert {row: (r["field"], r["line_number"], r["message"].split(": ", 1)[1]) for row, r in got.items()} == {
        2: ("category_l1", None, "unparseable row: not valid UTF-8 at byte 1 of the value"),
        3: ("category_l2", None, "unparseable row: not valid UTF-8 at byte 6 of the value"),
    }
    assert json.loads(got[3]["raw_record"])["category_l2"] == "music/\\xff"
    lake = duckdb.sql(f"SELECT item_id FROM read_parquet('{platform.lake_dir}/items/*/*.parquet') ORDER BY 1")
    assert lake.fetchall() == [(10,), (13,)]  # and the lake stays readable


DATE_ONLY = "is a date without a time of day, not a TIMESTAMP (YYYY-MM-DD HH:MM:SS)"


def test_date_only_timestamps_are_wrong_types(platform: PlatformConfig) -> None:
    """The contract's timestamps are date-times: `2026-01-03` alone (CSV text, or a Parquet DATE
    column) is quarantined as wrong_type with the file, row and field; date-times load."""
    batch = platform.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    (batch / "users.csv").write_text(
        "user_id,signup_ts,gender,age_bucket,city_tier\n"
        "1,2026-01-03 08:00:00,f,<18,1\n"
        "2,2026-01-03,m,<18,1\n"
        "3,2026-01-03T09:30:00Z,u,unknown,0\n"
    )
    pq.write_table(
        pa.table(
            {
                "item_id": [10, 11],
                "author_id": [1, 1],
                "category_l1": ["music", "music"],
                "category_l2": ["music/pop", "music/pop"],
                "content_cluster": [1, 1],
                "publish_ts": pa.array([dt.date(2026, 1, 3)] * 2, pa.date32()),
            }
        ),
        batch / "items.parquet",
    )
    (batch / "events.csv").write_text(
        "event_id,ts,user_id,session_id,event_type,experiment_bucket\n"
        "1,2026-01-03 10:00:00,1,1,session_start,control\n"
        "2,2026-01-03,3,2,session_start,control\n"
    )

    result = load_batch(batch, platform, now=NOW)

    want = {
        ("users", 2): ("signup_ts", '"2026-01-03"', "csv"),
        ("items", 1): ("publish_ts", '"2026-01-03"', "parquet"),
        ("items", 2): ("publish_ts", '"2026-01-03"', "parquet"),
        ("events", 2): ("ts", '"2026-01-03"', "csv"),
    }
    got = quarantine(platform)
    assert set(got) == set(want)
    for (table, row), (field, value, fmt) in want.items():
        r = got[(table, row)]
        assert (r["reason"], r["field"]) == ("wrong_type", field)
        assert r["message"] == f"landing/dt=2026-01-03/{table}.{fmt} row {row}, field {field}: {value} {DATE_ONLY}"
    assert sorted(u["user_id"] for u in lake_rows(platform, "users")) == [1, 3]
    assert [e["event_id"] for e in lake_rows(platform, "events")] == [1]
    assert result.quarantined_by_reason == {"wrong_type": 4}
    (alert,) = read_alerts(platform)
    assert alert["severity"] == "warning" and alert["details"]["by_reason"] == {"wrong_type": 4}


def test_a_category_l2_belongs_to_one_category_l1(platform: PlatformConfig) -> None:
    """category_l2 is unique across all category_l1: an item putting an l2 under another l1 than
    the lake's (or than the first item of its batch with that l2) is quarantined as invalid_value."""
    first = platform.landing_dir / "dt=2026-01-03"
    first.mkdir(parents=True)
    (first / "users.csv").write_text(
        "user_id,signup_ts,gender,age_bucket,city_tier\n1,2026-01-03 08:00:00,f,<18,1\n"
    )
    (first / "items.csv").write_text(
        "item_id,author_id,category_l1,category_l2,content_cluster,publish_ts\n"
        "10,1,music,music/pop,1,2026-01-03 09:00:00\n"
    )
    second = platform.landing_dir / "dt=2026-01-04"
    second.mkdir(parents=True)
    (second / "items.csv").write_text(
        "item_id,author_id,category_l1,category_l2,content_cluster,publish_ts\n"
        "11,1,music,music/rock,1,2026-01-04 09:00:00\n"
        "12,1,food,music/pop,1,2026-01-04 09:00:00\n"  # the lake has music/pop under music
        "13,1,food,food/street,1,2026-01-04 09:00:00\n"
        "14,1,sports,food/street,1,2026-01-04 09:00:00\n"  # row 3 of this batch has it under food
        "15,1,music,music/rock,1,2026-01-04 09:00:00\n"
        "16,1,music,music/pop,-1,2026-01-04 09:00:00\n"  # an earlier rule comes first
    )

    assert load_batch(first, platform, now=NOW).quarantined_rows == 0
    result = load_batch(second, platform, now=NOW)

    got = {k: (r["reason"], r["field"], r["message"]) for k, r in quarantine(platform).items()}
    source = "landing/dt=2026-01-04/items.csv"
    taken = "is already under category_l1 {} (an l2 belongs to one l1)"
    assert got == {
        ("items", 2): ("invalid_value", "category_l2", f'{source} row 2, field category_l2: "music/pop" '
                       + taken.format('"music"')),
        ("items", 4): ("invalid_value", "category_l2", f'{source} row 4, field category_l2: "food/street" '
                       + taken.format('"food"')),
        ("items", 6): ("invalid_value", "content_cluster", f"{source} row 6, field content_cluster: "
                       + "negative content cluster (-1)"),
    }
    assert sorted(i["item_id"] for i in lake_rows(platform, "items")) == [10, 11, 13, 15]
    assert result.tables["items"].quarantined == {"invalid_value": 3}
    (alert,) = read_alerts(platform)
    assert alert["details"]["by_table"] == {"items": {"invalid_value": 3}}
