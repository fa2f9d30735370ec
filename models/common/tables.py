"""The tables models read, as numpy arrays: the item catalogue, (user, item) events, ranking
exposures with their labels, user features. Loaded from the warehouse by tasks/retrieval/data.py
and tasks/ranking/data.py; ids stay external (int64, as in the contract)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tasks.core.config import RANKING_HEADS


@dataclass(frozen=True)
class Catalogue:
    """Every item known on a day, sorted by item_id, with its features (categories as codes)."""

    item_id: np.ndarray  # int64, sorted
    author_id: np.ndarray  # int64
    category_l1: np.ndarray  # int32 code (index into l1_names)
    category_l2: np.ndarray  # int32 code (index into l2_names)
    content_cluster: np.ndarray  # int32
    publish_us: np.ndarray  # int64 microseconds since the epoch (UTC)
    l1_names: tuple[str, ...]
    l2_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.item_id)

    def subset(self, rows: np.ndarray) -> Catalogue:
        """The catalogue of the given rows (ascending), category names kept."""
        return dataclasses.replace(self, **{f: getattr(self, f)[rows] for f in (
            "item_id", "author_id", "category_l1", "category_l2", "content_cluster", "publish_us")})

    def index(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id (ValueError on an id not in the catalogue)."""
        rows = np.searchsorted(self.item_id, item_ids)
        rows = np.minimum(rows, len(self.item_id) - 1)
        if len(item_ids) and not np.array_equal(self.item_id[rows], item_ids):
            raise ValueError("item ids outside the catalogue")
        return rows


@dataclass(frozen=True)
class Events:
    """(user, item) events of a window, in time order; items as catalogue rows."""

    user_id: np.ndarray  # int64
    item: np.ndarray  # int64 catalogue row
    ts_us: np.ndarray  # int64
    day: np.ndarray  # datetime64[D]

    def __len__(self) -> int:
        return len(self.user_id)

    def select(self, rows: np.ndarray) -> Events:
        """The events at `rows` (a mask or indices), order kept."""
        return Events(self.user_id[rows], self.item[rows], self.ts_us[rows], self.day[rows])


@dataclass(frozen=True)
class Exposures:
    """Ranking examples, ordered by (day, shown_at, user_id, item_id)."""

    day: np.ndarray  # datetime64[D]
    user_id: np.ndarray  # int64
    item_id: np.ndarray  # int64
    shown_us: np.ndarray  # int64 microseconds since the epoch (UTC): the first impression
    position: np.ndarray  # int64 feed slot, -1 when the log has none
    labels: np.ndarray  # float32 (n, len(RANKING_HEADS)), 0/1, columns in RANKING_HEADS order

    def __len__(self) -> int:
        return len(self.user_id)

    def label(self, head: str) -> np.ndarray:
        """The 0/1 labels of one head."""
        return self.labels[:, RANKING_HEADS.index(head)]

    def select(self, rows: np.ndarray) -> Exposures:
        """The examples at `rows` (a mask or indices)."""
        return Exposures(*(getattr(self, f)[rows] for f in ("day", "user_id", "item_id", "shown_us", "position", "labels")))


@dataclass(frozen=True)
class UserTable:
    """User features as of a day, sorted by user_id."""

    user_id: np.ndarray  # int64
    gender: np.ndarray  # str
    age_bucket: np.ndarray  # str
    city_tier: np.ndarray  # int64
