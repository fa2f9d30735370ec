"""Full-ranking inputs (docs/METHODS.md "Full ranker (MMoE + DIN)") for a set of exposures, as int64 embedding rows (0 = unknown
or padding):

- user: user id, gender, age bucket, city tier (two-tower vocabularies, models/retrieval/two_tower_data.py);
- item: item id, author, category_l1, category_l2, content cluster of the candidate;
- context: feed position (bucketed), hour of day of the impression (UTC), the item's age at the
  impression in log2-hours (bucketed); fixed-size tables, no vocabulary;
- the behaviour sequence: the item rows (all five columns) of the user's last `sequence_length`
  clicks strictly before the impression, most recent first, padded with all-zero rows.

Items are catalogue rows (tasks.retrieval.data) until they become vocabulary rows here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from models.common.features import gather, item_features, lookup, user_features
from models.common.tables import Catalogue, Events, Exposures, UserTable
from models.common.vocab import Vocab

CONTEXT_COLUMNS = ("position", "hour", "item_age")
POSITION_EDGES = np.array([1, 2, 3, 4, 6, 8, 12, 20])  # bucket 1: slot 0, 2: slot 1, ..., 9: slot >= 20
MAX_AGE_BUCKET = 14  # log2(1 + hours) capped: about two years
CONTEXT_SIZES = {"position": len(POSITION_EDGES) + 2, "hour": 25, "item_age": MAX_AGE_BUCKET + 2}
US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True)
class RankingFeatures:
    """Model inputs of n exposures (rows aligned with the exposures)."""

    users: np.ndarray  # (n, 4) USER_COLUMNS rows
    items: np.ndarray  # (n, 5) ITEM_COLUMNS rows of the candidate
    context: np.ndarray  # (n, 3) CONTEXT_COLUMNS rows
    seq: np.ndarray  # (n, L, 5) ITEM_COLUMNS rows of the earlier clicks, most recent first, 0 = padding

    def __len__(self) -> int:
        return len(self.users)

    def select(self, rows: np.ndarray) -> RankingFeatures:
        return RankingFeatures(self.users[rows], self.items[rows], self.context[rows], self.seq[rows])


def behaviour_sequences(clicks: Events, user_id: np.ndarray, shown_us: np.ndarray, length: int) -> np.ndarray:
    """(n, length) catalogue rows of each (user, time)'s last `length` clicks strictly before that
    time, most recent first, -1 padded.

    Clicks and queries are merged into one order by (user, time, query before click), so the
    clicks counted before a query are exactly those of earlier users or of its user strictly
    earlier; minus the user's first click, that is the end of its run among the sorted clicks."""
    click_order = np.lexsort((clicks.ts_us, clicks.user_id))
    c_user, c_item = clicks.user_id[click_order], clicks.item[click_order]
    n = len(user_id)
    users = np.concatenate([user_id, c_user])
    times = np.concatenate([shown_us, clicks.ts_us[click_order]])
    is_click = np.concatenate([np.zeros(n, bool), np.ones(len(c_user), bool)])
    merged = np.lexsort((is_click, times, users))
    clicks_before = np.cumsum(is_click[merged]) - is_click[merged]  # clicks ahead of each merged row
    ends = np.empty(n, dtype=np.int64)
    ends[merged[merged < n]] = clicks_before[merged < n]
    starts = np.searchsorted(c_user, user_id, side="left")
    return gather(c_item, ends, starts, length)


def context_features(exposures: Exposures, catalogue: Catalogue) -> np.ndarray:
    """(n, 3) rows: position bucket (0: no position), hour + 1, log2-hours age bucket + 1 (0: item
    not in the catalogue)."""
    out = np.zeros((len(exposures), 3), dtype=np.int64)
    known_pos = exposures.position >= 0
    out[known_pos, 0] = 1 + np.searchsorted(POSITION_EDGES, exposures.position[known_pos], side="right")
    out[:, 1] = 1 + (exposures.shown_us // US_PER_HOUR) % 24
    rows, found = lookup(exposures.item_id, catalogue.item_id)
    hours = np.maximum(exposures.shown_us - catalogue.publish_us[rows], 0) / US_PER_HOUR if len(catalogue) else 0
    age = 1 + np.minimum(np.floor(np.log2(1 + hours)), MAX_AGE_BUCKET).astype(np.int64)
    out[:, 2] = np.where(found, age, 0)
    return out


def ranking_features(
    vocabs: Mapping[str, Vocab],
    catalogue: Catalogue,
    users: UserTable,
    clicks: Events,
    exposures: Exposures,
    sequence_length: int,
) -> RankingFeatures:
    """The inputs of `exposures`; `clicks` (on `catalogue` rows) supply the sequences. Ids missing
    from `vocabs`, `users` or `catalogue` get row 0."""
    table = np.vstack([np.zeros((1, 5), np.int64), item_features(vocabs, catalogue)])  # row 0: padding
    cat_rows, found = lookup(exposures.item_id, catalogue.item_id)
    seq = behaviour_sequences(clicks, exposures.user_id, exposures.shown_us, sequence_length)
    return RankingFeatures(
        users=user_features(vocabs, users, exposures.user_id),
        items=table[np.where(found, cat_rows + 1, 0)],
        context=context_features(exposures, catalogue),
        seq=table[seq + 1],
    )
