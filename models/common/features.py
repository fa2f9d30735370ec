"""Feature arrays every embedding model shares: vocabularies over a day's ids, user and item feature
rows, behaviour sequences (the last clicks before a time, as item rows)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.common.tables import Catalogue, Events, UserTable
from models.common.vocab import KINDS, Vocab


def build_vocabs(
    catalogue: Catalogue, users: UserTable, user_ids: np.ndarray, base: Mapping[str, Vocab] | None = None
) -> dict[str, Vocab]:
    """Vocabularies over the catalogue, the user feature values and `user_ids`; with `base`, its
    vocabularies extended by the new values (old rows kept)."""
    values = {
        "user": user_ids,
        "gender": users.gender,
        "age_bucket": users.age_bucket,
        "city_tier": users.city_tier,
        "item": catalogue.item_id,
        "author": catalogue.author_id,
        "category_l1": np.asarray(catalogue.l1_names)[catalogue.category_l1],
        "category_l2": np.asarray(catalogue.l2_names)[catalogue.category_l2],
        "content_cluster": catalogue.content_cluster.astype(np.int64),
    }
    if base is None:
        return {kind: Vocab.build(values[kind]) for kind in KINDS}
    return {kind: base[kind].extend(values[kind]) for kind in KINDS}


def item_features(vocabs: Mapping[str, Vocab], catalogue: Catalogue) -> np.ndarray:
    """(len(catalogue), 5) int64 vocabulary rows: item, author, category_l1, category_l2, cluster."""
    return np.stack(
        [
            vocabs["item"].rows(catalogue.item_id),
            vocabs["author"].rows(catalogue.author_id),
            vocabs["category_l1"].rows(np.asarray(catalogue.l1_names)[catalogue.category_l1]),
            vocabs["category_l2"].rows(np.asarray(catalogue.l2_names)[catalogue.category_l2]),
            vocabs["content_cluster"].rows(catalogue.content_cluster.astype(np.int64)),
        ],
        axis=1,
    )


def lookup(values: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each value in sorted_ids, whether it is there; position 0 where not)."""
    if not len(sorted_ids):
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    found = sorted_ids[pos] == values
    return np.where(found, pos, 0), found


def user_features(vocabs: Mapping[str, Vocab], users: UserTable, user_ids: np.ndarray) -> np.ndarray:
    """(len(user_ids), 4) int64 vocabulary rows: user, gender, age bucket, city tier (0 = unknown,
    also for a user missing from `users`)."""
    pos, known = lookup(user_ids, users.user_id)
    out = np.zeros((len(user_ids), 4), dtype=np.int64)
    out[:, 0] = vocabs["user"].rows(user_ids)
    for col, kind in enumerate(("gender", "age_bucket", "city_tier"), start=1):
        out[known, col] = vocabs[kind].rows(getattr(users, kind)[pos[known]])
    return out


def _by_user(events: Events) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(order: events sorted by user then time, distinct users, start and end of each user's run)."""
    order = np.argsort(events.user_id, kind="stable")  # events are time-ordered
    users, starts, counts = np.unique(events.user_id[order], return_index=True, return_counts=True)
    return order, users, starts, starts + counts


def gather(items: np.ndarray, ends: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(len(ends), length) items[ends - 1], items[ends - 2], ... while >= starts; -1 beyond."""
    idx = ends[:, None] - 1 - np.arange(length)[None, :]
    return np.where(idx >= starts[:, None], items[np.maximum(idx, 0)], -1) if len(items) else np.full(idx.shape, -1)


def sequences_before(events: Events, length: int, rows: np.ndarray) -> np.ndarray:
    """(len(rows), length) catalogue rows of the previous positives of the user of each event
    events[rows], most recent first, -1 padded."""
    order, _, starts, ends = _by_user(events)
    at = np.empty(len(events), dtype=np.int64)
    at[order] = np.arange(len(events))  # each event's place in the user-then-time order
    run_start = np.repeat(starts, ends - starts)
    return gather(events.item[order], at[rows], run_start[at[rows]], length)


def latest_sequences(events: Events, user_ids: np.ndarray, length: int) -> np.ndarray:
    """(len(user_ids), length) catalogue rows of each user's last positives in `events`, most
    recent first, -1 padded (all -1 for a user without events)."""
    order, users, starts, ends = _by_user(events)
    if not len(users):
        return np.full((len(user_ids), length), -1, dtype=np.int64)
    pos, known = lookup(user_ids, users)
    return gather(events.item[order], np.where(known, ends[pos], 0), np.where(known, starts[pos], 0), length)


def to_item_rows(seq: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """Catalogue-row sequences (-1 padded) as item vocabulary rows (0 padded)."""
    return np.where(seq >= 0, item_rows[np.maximum(seq, 0)], 0)
