"""Arrow tables of a day: the contract tables (ids = index + 1) and the ground-truth partitions.

String columns of the contract tables are dictionary arrays (written without the Arrow schema, so
Parquet readers and DuckDB see plain strings and the file schema equals the contract's).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.core.contract import AGE_BUCKETS, EVENT_TYPES, FOLLOW_ACTIONS, GENDERS, TABLES
from tasks.simulator.events import EventColumns, Labels
from tasks.simulator.world import COUNTRIES, INTEREST_SLOTS, Items, Taxonomy, Users, experiment_bucket_index, sigmoid

_DICT = pa.dictionary(pa.int32(), pa.string())


def write_schema(table: str) -> pa.Schema:
    """The contract schema of `table` with its strings as dictionaries (how the simulator builds it)."""
    schema = TABLES[table].arrow_schema()
    return pa.schema([pa.field(f.name, _DICT, f.nullable) if f.type == pa.string() else f for f in schema])


def _dict(codes: np.ndarray, values: tuple[str, ...]) -> pa.DictionaryArray:
    codes = codes.astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(values, pa.string()))


def _labels(labels: Labels, nulls: pa.Array) -> pa.Array:
    return nulls if labels.codes is None else _dict(labels.codes, labels.values)


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=values < 0)


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), mask=us < 0).cast(pa.timestamp("us"))


def _table(name: str, columns: list[pa.Array]) -> pa.Table:
    return pa.Table.from_arrays(columns, schema=write_schema(name))


def users_table(users: Users, lo: int) -> pa.Table:
    """Contract rows of users[lo:]."""
    return _table(
        "users",
        [
            pa.array(np.arange(lo, len(users), dtype=np.int64) + 1),
            _ts(users.signup_us[lo:]),
            _dict(users.gender[lo:], GENDERS),
            _dict(users.age[lo:], AGE_BUCKETS),
            pa.array(users.city_tier[lo:].astype(np.int32)),
            _dict(users.country[lo:], COUNTRIES),
        ],
    )


def items_table(items: Items, tax: Taxonomy, lo: int) -> pa.Table:
    """Contract rows of items[lo:]."""
    l2 = items.l2[lo:]
    return _table(
        "items",
        [
            pa.array(np.arange(lo, len(items), dtype=np.int64) + 1),
            pa.array(items.author[lo:].astype(np.int64) + 1),
            _dict(tax.l2_parent[l2], tax.l1_names),
            _dict(l2, tax.l2_names),
            pa.array(items.cluster[lo:].astype(np.int32)),
            _ts(items.publish_us[lo:]),
            _nullable(items.duration_ms[lo:]),
            _ts(items.expire_us[lo:]),
        ],
    )


def follows_table(
    follower: np.ndarray, author: np.ndarray, ts: np.ndarray, is_follow: np.ndarray
) -> pa.Table:
    """Follow and unfollow actions (user indices), ordered by time."""
    order = np.argsort(ts, kind="stable")
    return _table(
        "follows",
        [
            pa.array(follower[order] + 1),
            pa.array(author[order] + 1),
            _ts(ts[order]),
            _dict(np.where(is_follow[order], 0, 1), FOLLOW_ACTIONS),
        ],
    )


def events_table(ev: EventColumns, day: int, buckets: tuple[str, ...]) -> pa.Table:
    """Contract rows of the day's events; event and session ids carry the day in bits 40 and up."""
    user_id = ev.user + 1
    high = np.int64(day) << np.int64(40)
    nulls = pa.nulls(len(ev), _DICT)
    return _table(
        "events",
        [
            pa.array(high | np.arange(len(ev), dtype=np.int64)),
            _ts(ev.ts),
            pa.array(user_id),
            pa.array(high | ev.session),
            pa.array(ev.item + 1, mask=ev.item < 0),
            _dict(ev.event_type, EVENT_TYPES),
            _nullable(ev.dwell_ms),
            _dict(experiment_bucket_index(user_id, len(buckets)), buckets),
            pa.array(ev.referrer + 1, mask=ev.referrer < 0),
            _nullable(ev.position),
            _labels(ev.strategy, nulls),
            _labels(ev.channel, nulls),
        ],
    )


def _l2_lists(tax: Taxonomy, l2: np.ndarray, used: np.ndarray) -> pa.ListArray:
    """Per row, the names of the categories `l2` where `used`."""
    offsets = np.concatenate([[0], np.cumsum(used.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(tax.l2_names).take(pa.array(l2[used].astype(np.int32))))


def truth_users_table(users: Users, tax: Taxonomy, lo: int) -> pa.Table:
    """Latent traits of users[lo:]: initial interests as parallel lists sorted by descending weight,
    and the dormant categories (undiscovered at signup)."""
    w = np.ascontiguousarray(users.interest_w[lo:, :INTEREST_SLOTS])  # boolean masks are slow on strided views
    used = w > 0
    interests = _l2_lists(tax, np.ascontiguousarray(users.interest_l2[lo:, :INTEREST_SLOTS]), used)
    dormant = np.ascontiguousarray(users.interest_l2[lo:, INTEREST_SLOTS:])
    return pa.table(
        {
            "user_id": pa.array(np.arange(lo, len(users), dtype=np.int64) + 1),
            "is_kol": users.is_kol[lo:],
            "is_creator": users.is_creator[lo:],
            "activity": sigmoid(users.activity[lo:]).astype(np.float32),
            "share_propensity": users.share_p[lo:],
            "productivity": users.productivity[lo:],
            "interest_l2": interests,
            "interest_weight": pa.ListArray.from_arrays(interests.offsets, pa.array(w[used])),
            "dormant_l2": _l2_lists(tax, dormant, dormant >= 0),
        }
    )


def truth_items_table(items: Items, lo: int) -> pa.Table:
    """Latent quality of items[lo:]."""
    return pa.table(
        {
            "item_id": pa.array(np.arange(lo, len(items), dtype=np.int64) + 1),
            "quality": items.quality[lo:],
        }
    )


def truth_user_days_table(
    active: np.ndarray,
    satisfaction: np.ndarray,
    shift: np.ndarray,
    return_parts: dict[str, np.ndarray],
    satisfaction_parts: dict[str, np.ndarray],
    discovered: np.ndarray,
    publish_rate: np.ndarray,
) -> pa.Table:
    """The day's active users (arrays aligned with `active`): satisfaction and its planted shift,
    P(return the next day) with its logit parts (logit_*), the satisfaction parts (sat_*), discovered
    dormant interests and today's expected uploads per active day."""
    logit = sum(return_parts.values())
    return pa.table(
        {
            "user_id": pa.array(active.astype(np.int64) + 1),
            "satisfaction": satisfaction.astype(np.float32),
            "p_return_next_day": sigmoid(logit).astype(np.float32),
            **{f"logit_{k}": v.astype(np.float32) for k, v in return_parts.items()},
            **{f"sat_{k}": v.astype(np.float32) for k, v in satisfaction_parts.items()},
            "satisfaction_shift": shift.astype(np.float32),
            "discovered_interests": discovered.astype(np.int32),
            "publish_rate": publish_rate.astype(np.float32),
        }
    )
