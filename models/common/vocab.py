"""Vocabularies: external ids (int64 or str) mapped to embedding rows, and the id kinds of the user and
item feature rows every embedding model (two-tower, full ranker, pre-ranker) shares."""

from __future__ import annotations

import numpy as np

USER_COLUMNS = ("user", "gender", "age_bucket", "city_tier")  # columns of a user feature row


ITEM_COLUMNS = ("item", "author", "category_l1", "category_l2", "content_cluster")  # of an item row


KINDS = USER_COLUMNS + ITEM_COLUMNS


class Vocab:
    """External ids (int64 or str) -> embedding rows: row r >= 1 holds ids[r - 1], row 0 = unknown."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        if len(self._sorted) and (self._sorted[1:] == self._sorted[:-1]).any():
            raise ValueError("a vocabulary lists an id twice")

    @classmethod
    def build(cls, values: np.ndarray) -> Vocab:
        """A fresh vocabulary of the distinct values, sorted."""
        return cls(np.unique(values))

    def __len__(self) -> int:
        """Embedding rows, the unknown row included."""
        return len(self.ids) + 1

    def rows(self, values: np.ndarray) -> np.ndarray:
        """int64 row of each value (0 for an id not in the vocabulary)."""
        values = np.asarray(values)
        if not len(self._sorted):
            return np.zeros(len(values), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == values, self._order[pos] + 1, 0).astype(np.int64)

    def extend(self, values: np.ndarray) -> Vocab:
        """This vocabulary with the new distinct values appended (sorted); old rows unchanged."""
        return Vocab(np.concatenate([self.ids, np.setdiff1d(np.unique(values), self.ids)]))
