"""The loader: quarantine reasons at planted rows (CSV and Parquet), the valid + quarantined = input
invariant, idempotent reloads, duplicates and references across batches, alerts, whole-file
errors, the warehouse views and the single-writer rule."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk.execution_time.context import set_current_context

from tasks.core.config import PlatformConfig, load_config
from tasks.core.contract import LOAD_ORDER, QUARANTINE_REASONS, TABLES
from tasks.core.lake import QUARANTINE_SCHEMA, compact, drop_batch
from tasks.core.warehouse import WarehouseWriterError, connect, connect_writer, refresh_views
from tasks.ingest.batch import BatchError
from tasks.ingest.load import load_batch, load_dir
from tasks.ops.alerts import read_alerts

NOW = dt.datetime(2026, 6, 1)
DAY = dt.date(2026, 1, 3)


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PlatformConfig:
    monkeypatch.setenv("RECPIPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RECPIPE_CONFIG", raising=False)
    monkeypatch.delenv("RECPIPE_SLACK_WEBHOOK_URL", raising=False)
    return load_config()


def with_threshold(cfg: PlatformConfig, share: float) -> PlatformConfig:
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"quarantine_alert_share": share})})


def write_batch(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text.strip("\n") + "\n")
    return folder


def lake_rows(cfg: PlatformConfig, table: str) -> pa.Table:
    files = sorted((cfg.lake_dir / table).glob("dt=*/*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files) if files else pa.table({})


def quarantine(cfg: PlatformConfig) -> dict[tuple[str, int], dict]:
    rows = lake_rows(cfg, "quarantine").to_pylist()
    return {(r["table_name"], r["row_number"]): r for r in rows}


def snapshot(cfg: PlatformConfig) -> dict[str, bytes]:
    return {
        str(p.relative_to(cfg.lake_dir)): p.read_bytes()
        for p in sorted(cfg.lake_dir.rglob("*"))
        if p.is_file()
    }


GOOD = {
    "users.csv": """
user_id,signup_ts,gender,age_bucket,city_tier,country
1,2026-01-03 08:00:00,f,18-24,2,DE
2,2025-12-01 09:00:00,m,25-34,1,
3,2026-01-03 10:00:00,u,unknown,0,FR
""",
    "items.csv": """
item_id,author_id,category_l1,category_l2,content_cluster,publish_ts,duration_ms,expire_ts
10,3,music,music/pop,7,2026-01-03 10:30:00,15000,
11,1,food,food/street,9,2025-11-30 10:30:00,,2027-01-01 00:00:00
""",
    "follows.csv": """
user_id,author_id,ts,action
1,3,2026-01-03 12:00:00,follow
2,3,2026-01-03 12:30:00,follow
""",
    "events.csv": """
event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket,referrer_user_id,position
1,2026-01-03 11:00:00,1,100,,session_start,,control,,
2,2026-01-03 11:00:01,1,100,10,impression,,control,,0
3,2026-01-03 11:00:02,1,100,10,click,5300,control,,0
4,2026-01-03 11:00:03,1,100,10,share,,control,,
5,2026-01-03 11:30:00,2,101,10,offsite_visit,,treatment_a,1,
6,2026-01-03 11:05:00,1,100,,session_end,300000,control,,
""",
}

# Planted problems: (table, data row) -> (reason, field). Rows not listed are valid.
BAD = {
    "users.csv": """
user_id,signup_ts,gender,age_bucket,city_tier,country
1,2026-01-03 08:00:00,f,18-24,2,DE
2,2025-12-01 09:00:00,m,25-34,1,
3,2026-01-03 10:00:00,x,unknown,0,FR
4,2026-01-04 00:00:00,u,unknown,0,
1,2026-01-03 11:00:00,f,18-24,2,DE
abc,2026-01-03 12:00:00,f,18-24,2,
5,2026-01-03 12:00:00,f,18-24,9,
6,2026-01-03 13:00:00,m,45+,3
,2026-01-03 13:00:00,m,45+,3,US
7,2026-01-03 14:00:00,m,45+,3,us
""",
    "items.csv": """
item_id,author_id,category_l1,category_l2,content_cluster,publish_ts,duration_ms,expire_ts
10,1,music,music/pop,7,2026-01-03 10:30:00,15000,
11,99,music,music/pop,7,2026-01-03 10:30:00,15000,
12,2,music,music/pop,7,2026-01-03 10:30:00,-1,
13,2,music,music/pop,7,2026-12-30 10:30:00,1000,
14,2,music,music/pop,seven,2026-01-03 10:30:00,1000,
15,3,music,music/pop,7,2026-01-03 10:30:00,1000,
""",
    "follows.csv": """
user_id,author_id,ts,action
1,2,2026-01-03 12:00:00,follow
1,2,2026-01-03 12:00:00,follow
2,1,2026-01-02 23:59:59,follow
2,2,2026-01-03 12:00:00,follow
2,1,2026-01-03 12:00:00,like
2,50,2026-01-03 12:00:00,unfollow
""",
    "events.csv": """
event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket,referrer_user_id,position
1,2026-01-03 11:00:00,1,100,,session_start,,control,,
2,2026-01-03 11:00:01,1,100,10,impression,,control,,0
3,2026-01-03 11:00:02,1,100,10,click,5300,control,,0
4,2026-01-03 11:00:03,1,100,10,teleport,,control,,
5,2026-01-03 11:00:04,2,101,10,click,-5,control,,
6,2026-01-03 11:00:05,99,102,10,click,100,control,,
7,2026-01-03 11:00:06,1,100,,click,100,control,,
8,2026-01-03 11:00:07,1,100,10,offsite_visit,,control,,
9,2026-01-03 11:00:08,1,100,77,like,,control,,
3,2026-01-03 11:00:09,1,100,10,like,,control,,
10,2026-01-04 00:00:00,1,100,10,like,,control,,
11,2026-01-03 11:00:10,1,100,10,like,,control,,-1
12,not-a-time,1,100,10,like,,control,,
13,2026-01-03 11:00:11,1,,10,like,,control,,
15,2026-01-03 11:00:13,1,100,10,like,,control,,,extra
16,2026-01-03 11:00:14,1,100,10,"li
ke",,control,,
17,2026-01-03 11:00:15,1,100,10,like,,control,,

18,2026-12-31 00:00:00,1,100,10,like,,control,,
19,2026-01-03 11:00:16,1,100,10,like,,control,,
""",
}
EXPECTED = {
    ("users", 3): ("invalid_value", "gender"),
    ("users", 4): ("ts_outside_batch_day", "signup_ts"),
    ("users", 5): ("duplicate_key", "user_id"),
    ("users", 6): ("wrong_type", "user_id"),
    ("users", 7): ("invalid_value", "city_tier"),
    ("users", 8): ("unparseable_row", "country"),  # the column the line is missing
    ("users", 9): ("null_key", "user_id"),
    ("users", 10): ("invalid_value", "country"),
    ("items", 2): ("unknown_user", "author_id"),
    ("items", 3): ("negative_dwell", "duration_ms"),
    ("items", 4): ("ts_in_future", "publish_ts"),
    ("items", 5): ("wrong_type", "content_cluster"),
    ("items", 6): ("unknown_user", "author_id"),  # user 3 is in the batch, but invalid
    ("follows", 2): ("duplicate_key", "user_id,author_id,ts,action"),
    ("follows", 3): ("ts_outside_batch_day", "ts"),
    ("follows", 4): ("invalid_value", "author_id"),
    ("follows", 5): ("invalid_value", "action"),
    ("follows", 6): ("unknown_user", "author_id"),
    ("events", 4): ("unknown_event_type", "event_type"),
    ("events", 5): ("negative_dwell", "dwell_ms"),
    ("events", 6): ("unknown_user", "user_id"),
    ("events", 7): ("missing_item_id", "item_id"),
    ("events", 8): ("missing_item_id", "referrer_user_id"),
    ("events", 9): ("unknown_item", "item_id"),
    ("events", 10): ("duplicate_key", "event_id"),
    ("events", 11): ("ts_outside_batch_day", "ts"),
    ("events", 12): ("invalid_value", "position"),
    ("events", 13): ("wrong_type", "ts"),
    ("events", 14): ("null_key", "session_id"),
    ("events", 15): ("unparseable_row", None),
    ("events", 16): ("unknown_event_type", "event_type"),  # "li\nke": a quoted field over two lines
    ("events", 19): ("ts_in_future", "ts"),  # row 18 is a blank line
}


def test_good_batch_loads_fully(cfg: PlatformConfig) -> None:
    batch = write_batch(cfg.landing_dir / "dt=2026-01-03", GOOD)
    (result,) = load_dir(cfg.landing_dir, cfg, now=NOW)
    assert result.day == DAY and result.quarantined_rows == 0
    assert {t: c.valid for t, c in result.tables.items()} == {
        "users": 3,
        "items": 2,
        "follows": 2,
        "events": 6,
    }
    for table in LOAD_ORDER:
        (f,) = (cfg.lake_dir / table).glob("dt=*/*.parquet")
        assert f == cfg.lake_dir / table / "dt=2026-01-03" / f"batch-{result.batch_id}.parquet"
        assert pq.read_schema(f).remove_metadata().equals(TABLES[table].arrow_schema())
    events = lake_rows(cfg, "events").to_pylist()
    assert [e["event_id"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[4]["referrer_user_id"] == 1 and events[4]["item_id"] == 10 and events[0]["item_id"] is None
    manifest = json.loads((cfg.lake_dir / "_batches" / f"{result.batch_id}.json").read_text())
    assert manifest["valid_rows"] == 13 and manifest["batch_dir"] == str(batch) and "loaded_at" in manifest
    assert not (cfg.lake_dir / "quarantine").exists()


def test_bad_csv_batch_quarantines_each_planted_row(cfg: PlatformConfig) -> None:
    write_batch(cfg.landing_dir / "dt=2026-01-03", BAD)
    result = load_batch(cfg.landing_dir / "dt=2026-01-03", cfg, now=NOW)
    got = quarantine(cfg)
    assert {k: (r["reason"], r["field"]) for k, r in got.items()} == EXPECTED
    assert set(QUARANTINE_REASONS) == {reason for reason, _ in EXPECTED.values()}
    for (table, row), r in got.items():
        assert r["batch_id"] == result.batch_id
        assert r["source_file"] == f"landing/dt=2026-01-03/{table}.csv"
        assert r["message"].startswith(f"landing/dt=2026-01-03/{table}.csv row {row}")
        if r["field"]:
            assert f"field {r['field']}:" in r["message"]
    assert (
        got[("events", 5)]["message"]
        == "landing/dt=2026-01-03/events.csv row 5, field dwell_ms: negative dwell (-5)"
    )
    assert "first seen at row 3" in got[("events", 10)]["message"]
    assert json.loads(got[("events", 5)]["raw_record"])["dwell_ms"] == "-5"
    assert "extra" in json.loads(got[("events", 15)]["raw_record"])
    # Physical lines: header is line 1; row 16 spans lines 17-18; row 18 is the blank line 20.
    assert {k: got[("events", k)]["line_number"] for k in (5, 15, 16, 19)} == {5: 6, 15: 16, 16: 17, 19: 21}
    assert got[("users", 8)]["line_number"] == 9
    assert "unparseable row: Expected Number of Columns: 6 Found: 5" in got[("users", 8)]["message"]
    # valid + quarantined = input, per table, in the result and in the lake files.
    inputs = {"users": 10, "items": 6, "follows": 6, "events": 19}
    for table, counts in result.tables.items():
        assert counts.input == inputs[table]
        in_lake = lake_rows(cfg, table).num_rows
        quarantined = sum(1 for t, _ in got if t == table)
        assert counts.valid == in_lake and counts.quarantined_total == quarantined
        assert in_lake + quarantined == counts.input
    assert sorted(lake_rows(cfg, "events")["event_id"].to_pylist()) == [1, 2, 3, 17, 19]
    assert (
        pq.read_schema(next((cfg.lake_dir / "quarantine").glob("*/*.parquet")))
        .remove_metadata()
        .equals(QUARANTINE_SCHEMA)
    )


def test_parquet_batch_with_wrong_types_and_nulls(cfg: PlatformConfig, tmp_path: Path) -> None:
    folder = tmp_path / "drop" / "dt=2026-01-03"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2, 3], pa.int32()),  # narrower int: converted
                "signup_ts": pa.array([dt.datetime(2026, 1, 3, 8)] * 3, pa.timestamp("ms")),
                "gender": ["f", "m", None],
                "age_bucket": ["18-24", "25-34", "45+"],
                "city_tier": pa.array([1, 2, 3], pa.int64()),
            }
        ),  # country left out: nullable
        folder / "users.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "event_id": [1, 2, 3, 4],
                "ts": pa.array([dt.datetime(2026, 1, 3, 9, i) for i in range(4)], pa.timestamp("us")),
                "user_id": [1, 2, 1, 7],
                "session_id": [10, 11, 10, 12],
                "event_type": ["session_start", "session_start", "session_end", "session_start"],
                "dwell_ms": ["", "abc", "120", None],  # strings: "" and "abc" are not BIGINT
                "experiment_bucket": ["control"] * 4,
                "extra": [1, 2, 3, 4],  # ignored
            }
        ),
        folder / "events.parquet",
    )
    result = load_batch(folder, cfg, now=NOW)
    got = {k: (r["reason"], r["field"], r["line_number"]) for k, r in quarantine(cfg).items()}
    assert got == {
        ("users", 3): ("null_key", "gender", None),
        ("events", 1): ("wrong_type", "dwell_ms", None),
        ("events", 2): ("wrong_type", "dwell_ms", None),
        ("events", 4): ("unknown_user", "user_id", None),
    }
    assert {t: (c.input, c.valid) for t, c in result.tables.items()} == {"users": (3, 2), "events": (4, 1)}
    (event,) = lake_rows(cfg, "events").to_pylist()
    assert event["dwell_ms"] == 120 and event["item_id"] is None
    assert lake_rows(cfg, "users")["country"].null_count == 2


def test_csv_values_are_converted_strictly(cfg: PlatformConfig, tmp_path: Path) -> None:
    batch = write_batch(
        tmp_path / "dt=2026-01-03",
        {
            "users.csv": "user_id,signup_ts,gender,age_bucket,city_tier\n1,2026-01-03 08:00:00,f,<18,1",
            "events.csv": "event_id,ts,user_id,session_id,event_type,dwell_ms,experiment_bucket\n"
            "1,2026-01-03T10:00:00+02:00,1,1,session_end,5.5,control\n"
            "2,2026-01-03T10:00:00+02:00,1,1,session_end, 7 ,control\n"
            "3,2026-01-03 10:00:00.123456,1,1,session_end,99999999999999999999,control",
        },
    )
    result = load_batch(batch, cfg, now=NOW)
    assert result.tables["events"].quarantined == {"wrong_type": 2}
    assert [(r["row_number"], r["field"]) for r in lake_rows(cfg, "quarantine").to_pylist()] == [
        (1, "dwell_ms"),
        (3, "dwell_ms"),
    ]
    (event,) = lake_rows(cfg, "events").to_pylist()
    assert event["ts"] == dt.datetime(2026, 1, 3, 8) and event["dwell_ms"] == 7  # the offset is applied


def test_reload_is_byte_identical_and_adds_nothing(cfg: PlatformConfig) -> None:
    write_batch(cfg.landing_dir / "dt=2026-01-03", BAD)
    first = load_dir(cfg.landing_dir, cfg, now=NOW)
    before = snapshot(cfg)
    again = load_dir(cfg.landing_dir, cfg, now=NOW + dt.timedelta(hours=1))
    assert snapshot(cfg) == before
    assert [r.summary() | {"seconds": 0} for r in again] == [r.summary() | {"seconds": 0} for r in first]
    refresh_views(cfg)
    with connect(cfg) as con:
        assert con.execute("SELECT count(*) - count(DISTINCT event_id) FROM raw.events").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM raw.quarantine").fetchall() == [(first[0].quarantined_rows,)]


def test_second_batch_duplicates_and_references_across_batches(cfg: PlatformConfig) -> None:
    write_batch(cfg.landing_dir / "dt=2026-01-03", GOOD)
    write_batch(
        cfg.landing_dir / "dt=2026-01-04",
        {
            "users.csv": "user_id,signup_ts,gender,age_bucket,city_tier\n4,2026-01-04 09:00:00,f,<18,3\n"
            "1,2026-01-04 09:00:00,f,<18,3",
            "events.csv": "event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket\n"
            "3,2026-01-04 10:00:00,1,200,10,click,10,control\n"  # event_id 3 was loaded on 2026-01-03
            "7,2026-01-04 10:00:00,3,201,11,click,10,control\n"  # user 3, item 11: from the first batch
            "8,2026-01-04 10:01:00,4,202,10,like,,control",  # user 4: this batch
        },
    )
    day1, day2 = load_dir(cfg.landing_dir, cfg, now=NOW)
    assert day1.quarantined_rows == 0
    # event 3 of 2026-01-04 is not compared with 2026-01-03: only the partitions a batch writes are
    assert day2.tables["events"].quarantined == {}
    assert day2.tables["users"].quarantined == {"duplicate_key": 1}
    assert "already in the lake" in quarantine(cfg)[("users", 2)]["message"]
    # The same event id again on the first day, from a different batch: a duplicate.
    write_batch(
        cfg.landing_dir / "dt=2026-01-03-extra",
        {
            "events.csv": "event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket\n"
            "3,2026-01-03 12:00:00,1,100,10,click,10,control"
        },
    )
    extra = load_batch(cfg.landing_dir / "dt=2026-01-03-extra", cfg, day=DAY, now=NOW)
    assert extra.tables["events"].quarantined == {"duplicate_key": 1}
    assert extra.batch_id not in {day1.batch_id, day2.batch_id}


def test_reload_after_references_arrive_replaces_the_batch_files(cfg: PlatformConfig, tmp_path: Path) -> None:
    orphan = write_batch(
        tmp_path / "orphan" / "dt=2026-01-04",
        {
            "events.csv": "event_id,ts,user_id,session_id,event_type,experiment_bucket\n"
            "100,2026-01-04 10:00:00,9,1,session_start,control"
        },
    )
    first = load_batch(orphan, cfg, now=NOW)
    assert first.tables["events"].quarantined == {"unknown_user": 1}
    write_batch(
        tmp_path / "users" / "dt=2026-01-04",
        {"users.csv": "user_id,signup_ts,gender,age_bucket,city_tier\n9,2026-01-04 09:00:00,m,45+,1"},
    )
    load_batch(tmp_path / "users" / "dt=2026-01-04", cfg, now=NOW)
    again = load_batch(orphan, cfg, now=NOW)
    assert again.batch_id == first.batch_id and again.tables["events"].valid == 1
    assert again.files == [f"events/dt=2026-01-04/batch-{first.batch_id}.parquet"]
    assert not list((cfg.lake_dir / "quarantine").glob(f"*/batch-{first.batch_id}.parquet"))
    manifest = json.loads((cfg.lake_dir / "_batches" / f"{first.batch_id}.json").read_text())
    assert manifest["valid_rows"] == 1 and manifest["files"] == again.files


def test_dump_is_partitioned_by_row_timestamps(cfg: PlatformConfig, tmp_path: Path) -> None:
    dump = write_batch(tmp_path / "export", {k: v for k, v in GOOD.items() if k != "follows.csv"})
    result = load_batch(dump, cfg, now=NOW)
    assert result.day is None and result.quarantined_rows == 0
    days = {
        t: sorted(p.parent.name for p in (cfg.lake_dir / t).glob("*/*.parquet")) for t in ("users", "items")
    }
    assert days == {"users": ["dt=2025-12-01", "dt=2026-01-03"], "items": ["dt=2025-11-30", "dt=2026-01-03"]}


def test_alert_only_when_share_passes_threshold(cfg: PlatformConfig) -> None:
    write_batch(cfg.landing_dir / "dt=2026-01-03", BAD)
    result = load_dir(cfg.landing_dir, with_threshold(cfg, 0.9), now=NOW)[0]
    assert 0.3 < result.quarantined_share < 0.9
    assert not read_alerts(cfg)
    load_dir(cfg.landing_dir, with_threshold(cfg, 0.3), now=NOW)  # the same batch, a stricter threshold
    (alert,) = read_alerts(cfg)
    assert (alert["kind"], alert["severity"]) == ("data_quality", "warning")
    assert alert["details"]["batch_id"] == result.batch_id
    assert alert["details"]["by_reason"] == result.quarantined_by_reason
    assert alert["details"]["by_reason"]["unparseable_row"] == 2


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        (
            {**GOOD, "events.csv": GOOD["events.csv"].replace("event_type,", "kind,")},
            "events.csv: missing required column(s) event_type",
        ),
        ({**GOOD, "clicks.csv": "a,b\n1,2"}, "clicks.csv: unknown file"),
        ({"users.parquet": "not parquet"}, "users.parquet: unreadable Parquet file"),
        ({**GOOD, "items.csv": ""}, "items.csv: empty file"),
        ({**GOOD, "users.parquet": "x"}, "users.parquet: table users is also in users.csv"),
    ],
)
def test_whole_file_problem_loads_nothing(cfg: PlatformConfig, files: dict[str, str], needle: str) -> None:
    batch = cfg.landing_dir / "dt=2026-01-03"
    batch.mkdir(parents=True)
    for name, text in files.items():
        (batch / name).write_text(text.strip("\n"))
    with pytest.raises(BatchError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dir(cfg.landing_dir, cfg, now=NOW)
    assert not cfg.lake_dir.exists()
    (alert,) = read_alerts(cfg)
    assert (alert["kind"], alert["severity"]) == ("data_quality", "critical") and needle.split(":")[
        0
    ] in alert["title"]


def test_views_count_what_was_loaded(cfg: PlatformConfig) -> None:
    write_batch(cfg.landing_dir / "dt=2026-01-03", {k: v for k, v in BAD.items() if k != "follows.csv"})
    result = load_dir(cfg.landing_dir, cfg, now=NOW)[0]
    refresh_views(cfg)
    refresh_views(cfg)  # idempotent
    with connect(cfg) as con:
        counts = {
            t: con.execute(f"SELECT count(*) FROM raw.{t}").fetchall()[0][0]
            for t in (*LOAD_ORDER, "quarantine")
        }
        follows_cols = [c[0] for c in con.execute("DESCRIBE raw.follows").fetchall()]
        day = con.execute("SELECT DISTINCT dt FROM raw.events").fetchall()
    assert counts == {
        **{t: c.valid for t, c in result.tables.items()},
        "follows": 0,
        "quarantine": result.quarantined_rows,
    }
    assert follows_cols == [*TABLES["follows"].column_names, "dt"]
    assert day == [(DAY,)]


def test_warehouse_writer_only_in_the_warehouse_pool(cfg: PlatformConfig) -> None:
    def task(pool: str) -> dict:
        return {"ti": SimpleNamespace(dag_id="ingest", task_id="publish", task=SimpleNamespace(pool=pool))}

    with (
        set_current_context(task("default_pool")),
        pytest.raises(WarehouseWriterError, match="warehouse_writer"),
    ):
        refresh_views(cfg)
    with set_current_context(task(cfg.airflow.warehouse_pool)):
        refresh_views(cfg)
    connect_writer(cfg).close()  # outside any task: allowed
    with pytest.raises(duckdb.Error), connect(cfg) as con:
        con.execute("CREATE TABLE x (a INT)")


HISTORY_START = dt.date(2023, 1, 1)
HISTORY_DAYS = 730


def write_history_dump(folder: Path) -> Path:
    """Two years of a tiny platform as one dump: 5 users from the first day and one more every 90
    days, an item a month, a follow every 60 days, one or two events a day except every 10th day,
    and a negative dwell every 50th day (quarantined)."""
    days = [HISTORY_START + dt.timedelta(days=i) for i in range(HISTORY_DAYS)]
    users = [(u, HISTORY_START) for u in range(1, 6)] + [(5 + i, d) for i, d in enumerate(days[90::90], 1)]
    items = [(100 + i, d) for i, d in enumerate(d for d in days if d.day == 1)]
    lines = {
        "users.csv": ["user_id,signup_ts,gender,age_bucket,city_tier"]
        + [f"{u},{d} 08:00:00,u,unknown,0" for u, d in users],
        "items.csv": ["item_id,author_id,category_l1,category_l2,content_cluster,publish_ts"]
        + [f"{i},1,c{i % 3},c{i % 3}/x,1,{d} 09:00:00" for i, d in items],
        "follows.csv": ["user_id,author_id,ts,action"] + [f"2,1,{d} 11:00:00,follow" for d in days[::60]],
        "events.csv": ["event_id,ts,user_id,session_id,item_id,event_type,dwell_ms,experiment_bucket"],
    }
    for i, d in enumerate(days):
        if i % 10 == 9:
            continue
        item = max(n for n, published in items if published <= d)
        lines["events.csv"].append(f"{2 * i},{d} 12:00:00,{i % 5 + 1},{i},,session_start,,control")
        if i % 3 == 0:
            dwell = -5 if i % 50 == 3 else 1000
            lines["events.csv"].append(f"{2 * i + 1},{d} 12:01:00,{i % 5 + 1},{i},{item},click,{dwell},control")
    return write_batch(folder, {name: "\n".join(rows) for name, rows in lines.items()})


def raw_views(cfg: PlatformConfig) -> dict[str, pd.DataFrame]:
    """Every raw view as pandas, rows in one order."""
    refresh_views(cfg)
    with connect(cfg) as con:
        frames = {t: con.sql(f"SELECT * FROM raw.{t}").df() for t in (*LOAD_ORDER, "quarantine")}
    return {t: f.sort_values(list(f.columns)).reset_index(drop=True) for t, f in frames.items()}


def assert_same_views(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for table, frame in want.items():
        pd.testing.assert_frame_equal(got[table], frame, obj=f"raw.{table}")


def lake_files(cfg: PlatformConfig) -> list[Path]:
    return sorted(cfg.lake_dir.glob("*/*/*.parquet"))


def test_compaction_bounds_the_files_and_keeps_every_row(cfg: PlatformConfig, tmp_path: Path) -> None:
    """Two years as a dump plus two daily batches, compacted into one file per table and month:
    the raw views keep every row (also mid-compaction, day files beside the month file); reloading
    a daily batch after compaction, and a reload that now loads rows it quarantined before, give the
    same views as without compaction; compacting again gives the same files."""
    dump = write_history_dump(tmp_path / "export")
    load_batch(dump, cfg, now=NOW)
    daily = write_batch(
        tmp_path / "landing" / "dt=2023-02-10",
        {"events.csv": "event_id,ts,user_id,session_id,event_type,experiment_bucket\n"
         "900001,2023-02-10 18:00:00,3,77,session_start,control"},
    )
    orphan = write_batch(  # user 99 is not known yet: quarantined, then loaded after compaction
        tmp_path / "landing" / "dt=2023-03-05",
        {"events.csv": "event_id,ts,user_id,session_id,event_type,experiment_bucket\n"
         "900002,2023-03-05 18:00:00,99,78,session_start,control"},
    )
    load_batch(daily, cfg, now=NOW)
    load_batch(orphan, cfg, now=NOW)
    before = raw_views(cfg)
    assert len(before["quarantine"]) == 1 + sum(1 for i in range(HISTORY_DAYS) if i % 150 == 3)  # + the orphan
    day_files = {f: f.read_bytes() for f in lake_files(cfg)}
    assert len(day_files) > 600  # one file per table and day

    done = compact(cfg.lake_dir, dt.date(2025, 1, 1))

    months = {(c.table, c.month) for c in done}
    assert len(months) == len(done) and {m for _, m in months} == {
        dt.date(2023 + i // 12, i % 12 + 1, 1) for i in range(24)
    }
    files = lake_files(cfg)
    assert len(files) == len(done) <= 5 * 24 and all(f.parent.name.startswith("month=") for f in files)
    assert sum(c.day_files for c in done) == len(day_files)
    assert_same_views(raw_views(cfg), before)
    compacted = snapshot(cfg)

    for f, data in day_files.items():  # mid-compaction: the month files written, the day files still there
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(data)
    assert_same_views(raw_views(cfg), before)
    compact(cfg.lake_dir, dt.date(2025, 1, 1))
    assert snapshot(cfg) == compacted

    load_batch(dump, cfg, now=NOW)  # the dump again: its day files back, shadowing its month rows
    assert_same_views(raw_views(cfg), before)
    load_batch(daily, cfg, now=NOW)
    assert_same_views(raw_views(cfg), before)
    compact(cfg.lake_dir, dt.date(2025, 1, 1))
    assert snapshot(cfg) == compacted

    write_batch(
        tmp_path / "landing-users" / "dt=2023-03-05",
        {"users.csv": "user_id,signup_ts,gender,age_bucket,city_tier\n99,2023-03-05 09:00:00,m,45+,1"},
    )
    load_batch(tmp_path / "landing-users" / "dt=2023-03-05", cfg, now=NOW)
    again = load_batch(orphan, cfg, now=NOW)
    assert again.valid_rows == 1
    after = raw_views(cfg)
    assert 900002 in set(after["events"].event_id) and 99 in set(after["users"].user_id)
    assert again.batch_id not in set(after["quarantine"].batch_id)
    assert len(after["quarantine"]) == len(before["quarantine"]) - 1

    compact(cfg.lake_dir, dt.date(2025, 1, 1))
    drop_batch(cfg.lake_dir, load_batch(daily, cfg, now=NOW).batch_id)  # to replace it: remove it
    dropped = raw_views(cfg)
    assert set(after["events"].event_id) - set(dropped["events"].event_id) == {900001}
    assert len(dropped["events"]) == len(after["events"]) - 1
