"""MovieLens 100K through the contract: convert u.user / u.item / u.data into a dump of contract CSVs.

The mapping (documented in docs/CONTRACT.md):

- users: u.user; age -> age_bucket, gender M/F -> m/f, city_tier = 1 + crc32(zip) mod 5 (a stable
  pseudo-tier: MovieLens has no city sizes), country US (5-digit zip) / CA (Canadian postcode) / null,
  signup_ts = the user's first rating. Plus one pseudo-author user per first genre
  (user_id = 1_000_000 + genre index, gender u, age unknown, tier 0), who "publishes" that genre's
  movies; signup_ts = the earliest publish_ts among them.
- items: u.item; category_l1 = first genre flag, category_l2 = "<l1>/<second genre>" or "<l1>/main",
  content_cluster = the genre flags as a bit mask, publish_ts = release date, or the first rating if
  the date is missing or later; author_id = the genre's pseudo-author; duration/expiry unknown.
- events: every rating is a `click` at its timestamp, a rating >= 4 also a `like` (same ts);
  event_id 2n-1 / 2n for the n-th line of u.data; session_id = user_id * 100000 + days since
  1970-01-01 (one session per user and day); experiment_bucket control.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.contract import TABLES

PSEUDO_AUTHOR_BASE = 1_000_000
SESSION_DAY_FACTOR = 100_000
GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_TS = "%Y-%m-%d %H:%M:%S"


def age_bucket(age: int) -> str:
    """The contract age bucket of an age in years."""
    if age < 18:
        return "<18"
    for upper, bucket in ((24, "18-24"), (34, "25-34"), (44, "35-44")):
        if age <= upper:
            return bucket
    return "45+"


def city_tier(zip_code: str) -> int:
    """A deterministic pseudo city tier 1..5 from a zip code."""
    return 1 + zlib.crc32(zip_code.encode()) % 5


def country(zip_code: str) -> str | None:
    """US for a 5-digit zip, CA for a Canadian postcode (letter digit letter ...), else unknown."""
    if len(zip_code) == 5 and zip_code.isdigit():
        return "US"
    if len(zip_code) >= 3 and zip_code[0].isalpha() and zip_code[1].isdigit() and zip_code[2].isalpha():
        return "CA"
    return None


def _read(src: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(
        src / "u.data", sep="\t", names=["user_id", "item_id", "rating", "unix"], dtype="int64"
    )
    users = pd.read_csv(
        src / "u.user",
        sep="|",
        names=["user_id", "age", "gender", "occupation", "zip"],
        encoding="latin-1",
        dtype={"zip": str},
    )
    items = pd.read_csv(
        src / "u.item",
        sep="|",
        names=["item_id", "title", "release", "video_release", "url", *GENRES],
        encoding="latin-1",
    )
    return ratings, users, items


def _items(items: pd.DataFrame, first_rating: pd.Series) -> pd.DataFrame:
    flags = items[list(GENRES)].to_numpy(dtype=np.int64)
    genre_idx = [np.flatnonzero(row) for row in flags]
    l1 = np.array([idx[0] if len(idx) else 0 for idx in genre_idx])
    l2 = [GENRES[idx[1]] if len(idx) > 1 else "main" for idx in genre_idx]
    released = pd.to_datetime(items["release"], format="%d-%b-%Y", errors="coerce")
    first = items["item_id"].map(first_rating)
    publish = released.where(released.notna() & ~(released > first), first)
    return pd.DataFrame(
        {
            "item_id": items["item_id"],
            "author_id": PSEUDO_AUTHOR_BASE + l1,
            "category_l1": [GENRES[i] for i in l1],
            "category_l2": [f"{GENRES[i]}/{second}" for i, second in zip(l1, l2, strict=True)],
            "content_cluster": flags @ (1 << np.arange(len(GENRES))),
            "publish_ts": publish,
            "duration_ms": pd.array([pd.NA] * len(items), dtype="Int64"),
            "expire_ts": pd.NaT,
        }
    )


def _users(users: pd.DataFrame, first_rating: pd.Series, items: pd.DataFrame) -> pd.DataFrame:
    real = pd.DataFrame(
        {
            "user_id": users["user_id"],
            "signup_ts": users["user_id"].map(first_rating),
            "gender": users["gender"].str.lower(),
            "age_bucket": users["age"].map(age_bucket),
            "city_tier": users["zip"].map(city_tier),
            "country": users["zip"].map(country),
        }
    )
    authors = items.groupby("author_id", as_index=False)["publish_ts"].min()
    pseudo = pd.DataFrame(
        {
            "user_id": authors["author_id"],
            "signup_ts": authors["publish_ts"],
            "gender": "u",
            "age_bucket": "unknown",
            "city_tier": 0,
            "country": None,
        }
    )
    return pd.concat([real, pseudo], ignore_index=True)


def _events(ratings: pd.DataFrame) -> pd.DataFrame:
    n = np.arange(1, len(ratings) + 1)
    ts = pd.to_datetime(ratings["unix"], unit="s")
    base = pd.DataFrame(
        {
            "ts": ts,
            "user_id": ratings["user_id"],
            "session_id": ratings["user_id"] * SESSION_DAY_FACTOR + ratings["unix"] // 86_400,
            "item_id": ratings["item_id"],
        }
    )
    clicks = base.assign(event_id=2 * n - 1, event_type="click")
    likes = base.assign(event_id=2 * n, event_type="like")[ratings["rating"].to_numpy() >= 4]
    events = pd.concat([clicks, likes]).sort_values("event_id", ignore_index=True)
    return events.assign(dwell_ms=pd.NA, experiment_bucket="control", referrer_user_id=pd.NA, position=pd.NA,
                         strategy=pd.NA, channel=pd.NA)


def convert_movielens(src_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write users.csv, items.csv and events.csv (a contract dump) from MovieLens 100K; rows per file."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    ratings, users, items = _read(src_dir)
    ts = pd.to_datetime(ratings["unix"], unit="s")
    first_user = ts.groupby(ratings["user_id"]).min()
    first_item = ts.groupby(ratings["item_id"]).min()
    tables = {"items": _items(items, first_item)}
    tables["users"] = _users(users, first_user, tables["items"])
    tables["events"] = _events(ratings)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df[TABLES[name].column_names].to_csv(out_dir / f"{name}.csv", index=False, date_format=_TS)
    return {name: len(df) for name, df in tables.items()}
