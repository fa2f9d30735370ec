"""MovieLens 100K through the contract: convert, load as a dump, and check the warehouse against
counts computed independently from the raw MovieLens files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import PlatformConfig, load_config
from tasks.core.warehouse import connect, refresh_views
from tasks.ingest.load import load_dir
from tasks.ingest.movielens import GENRES, PSEUDO_AUTHOR_BASE, age_bucket, convert_movielens

ML = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"
pytestmark = pytest.mark.skipif(not (ML / "u.data").exists(), reason=f"MovieLens 100K not found at {ML}")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlatformConfig, list]:
    tmp = tmp_path_factory.mktemp("movielens")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECPIPE_DATA_DIR", str(tmp / "data"))
    mp.delenv("RECPIPE_CONFIG", raising=False)
    mp.delenv("RECPIPE_SLACK_WEBHOOK_URL", raising=False)
    try:
        cfg = load_config()
        convert_movielens(ML, tmp / "movielens")
        results = load_dir(tmp / "movielens", cfg)
        refresh_views(cfg)
        yield cfg, results
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return pd.read_csv(ML / "u.data", sep="\t", names=["user", "item", "rating", "ts"])


def _sql(cfg: PlatformConfig, query: str) -> list[tuple]:
    with connect(cfg) as con:
        return con.execute(query).fetchall()


def test_everything_loads_and_nothing_is_quarantined(loaded) -> None:
    cfg, (result,) = loaded
    assert result.day is None  # a dump
    assert result.quarantined_rows == 0 and result.valid_rows == result.input_rows
    assert _sql(cfg, "SELECT count(*) FROM raw.quarantine") == [(0,)]


def test_users_items_and_pseudo_authors(loaded) -> None:
    cfg, _ = loaded
    people = _sql(cfg, f"SELECT count(*) FROM raw.users WHERE user_id < {PSEUDO_AUTHOR_BASE}")
    authors = _sql(
        cfg,
        f"SELECT count(*), min(user_id), max(user_id) FROM raw.users WHERE user_id >= {PSEUDO_AUTHOR_BASE}",
    )
    assert people == [(943,)]
    n, lo, hi = authors[0]
    assert 1 <= n <= len(GENRES) and lo >= PSEUDO_AUTHOR_BASE and hi < PSEUDO_AUTHOR_BASE + len(GENRES)
    assert _sql(cfg, "SELECT count(*), count(DISTINCT item_id) FROM raw.items") == [(1682, 1682)]
    # every l2 belongs to exactly one l1; every author is a pseudo-author user
    assert _sql(
        cfg,
        "SELECT max(n) FROM (SELECT count(DISTINCT category_l1) AS n FROM raw.items GROUP BY category_l2)",
    ) == [(1,)]
    assert _sql(cfg, "SELECT count(*) FROM raw.items i ANTI JOIN raw.users u ON u.user_id = i.author_id") == [
        (0,)
    ]


def test_user_demographics_match_u_user(loaded) -> None:
    cfg, _ = loaded
    raw = pd.read_csv(
        ML / "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip"], encoding="latin-1"
    )
    expected = {(r.user_id, r.gender.lower(), age_bucket(r.age)) for r in raw.itertuples()}
    got = set(
        _sql(cfg, f"SELECT user_id, gender, age_bucket FROM raw.users WHERE user_id < {PSEUDO_AUTHOR_BASE}")
    )
    assert got == expected


def test_clicks_likes_and_daily_users_match_u_data(loaded, ratings: pd.DataFrame) -> None:
    cfg, _ = loaded
    counts = dict(_sql(cfg, "SELECT event_type, count(*) FROM raw.events GROUP BY 1"))
    assert counts == {"click": 100_000, "like": int((ratings["rating"] >= 4).sum())}
    day = pd.to_datetime(ratings["ts"], unit="s").dt.date
    expected = ratings.groupby(day)["user"].nunique().to_dict()
    got = dict(_sql(cfg, "SELECT dt, count(DISTINCT user_id) FROM raw.events GROUP BY dt"))
    assert got == expected
    assert _sql(cfg, "SELECT count(*) FROM raw.events WHERE CAST(ts AS DATE) <> dt") == [(0,)]


def test_reload_changes_nothing(loaded) -> None:
    cfg, (first,) = loaded
    files = {p: p.read_bytes() for p in cfg.lake_dir.rglob("*.parquet")}
    (again,) = load_dir(first.batch_dir, cfg)
    assert again.batch_id == first.batch_id and again.files == first.files
    assert {p: p.read_bytes() for p in cfg.lake_dir.rglob("*.parquet")} == files
