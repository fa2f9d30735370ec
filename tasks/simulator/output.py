"""Where and how the simulator writes, and the ground-truth reader.

Layout:

- landing_dir/dt=YYYY-MM-DD/{users,items,follows,events}.parquet: the contract batch of a day;
- ground_truth_dir/users/dt=YYYY-MM-DD/part-0.parquet: users who appeared that day (the first day
  also holds the initial base) with user_id, is_kol, is_creator, activity (base daily activity
  probability), share_propensity, productivity (items per active day), interest_l2 and
  interest_weight (parallel lists, descending weight: the sparse latent interest vector at signup),
  dormant_l2 (the dormant categories, weight 0 until discovered);
- ground_truth_dir/items/dt=.../part-0.parquet: item_id, quality (latent, in (0, 1));
- ground_truth_dir/user_days/dt=.../part-0.parquet: every user active that day (behaviour.py has
  the formulas) with
  - satisfaction (today's, in [0, 1), after the planted shift) and satisfaction_shift (the shift
    applied, after clipping; 0 without a planted effect);
  - sat_relevance, sat_variety, sat_followed, sat_fatigue, sat_low_quality: the additive parts of
    the raw satisfaction (satisfaction = 1 - exp(-max(sum, 0)) + satisfaction_shift);
  - p_return_next_day = sigmoid(sum of logit_activity, logit_habit, logit_satisfaction,
    logit_new_user, logit_planted, logit_follow), its logit parts;
  - discovered_interests: dormant interests discovered by the end of the day;
  - publish_rate: today's expected uploads on an active day (creators; 0 otherwise);
- ground_truth_dir/_state/: daily state snapshots (see state.py).

Every file is written atomically (temporary file in the same folder, then os.replace).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.atomic import atomic_write
from tasks.core.contract import LOAD_ORDER
from tasks.simulator.day import DayOutput

TruthTable = Literal["users", "items", "user_days"]
TRUTH_TABLES: tuple[TruthTable, ...] = ("users", "items", "user_days")


def landing_path(landing_dir: Path, day: dt.date, table: str) -> Path:
    """The landing file of `table` for `day`."""
    return Path(landing_dir) / f"dt={day.isoformat()}" / f"{table}.parquet"


def truth_path(ground_truth_dir: Path, table: TruthTable, day: dt.date) -> Path:
    """The ground-truth partition of `table` for `day`."""
    return Path(ground_truth_dir) / table / f"dt={day.isoformat()}" / "part-0.parquet"


def parquet_options(table: pa.Table) -> dict[str, object]:
    """pq.write_table options: snappy, Parquet dictionary pages only for the string columns."""
    strings = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type)]
    return {"compression": "snappy", "use_dictionary": strings}


def write_parquet(table: pa.Table, path: Path, *, arrow_schema: bool = True) -> None:
    """Write `table` atomically. arrow_schema=False: dictionary strings read back as plain strings."""
    options = parquet_options(table)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, store_schema=arrow_schema, **options))


def write_day(out: DayOutput, landing_dir: Path | None, ground_truth_dir: Path) -> None:
    """Write a day's contract tables (unless landing_dir is None) and ground-truth partitions."""
    if landing_dir is not None:
        for name in LOAD_ORDER:
            write_parquet(out.tables[name], landing_path(landing_dir, out.day, name), arrow_schema=False)
    for name in TRUTH_TABLES:
        write_parquet(out.truth[name], truth_path(ground_truth_dir, name, out.day))


def read_ground_truth(ground_truth_dir: Path, table: TruthTable) -> pd.DataFrame:
    """All day partitions of a ground-truth table, oldest first, with a `dt` (date) column.

    users: user_id, is_kol, is_creator, activity, share_propensity, productivity, interest_l2,
    interest_weight (lists, descending weight), dormant_l2; items: item_id, quality; user_days:
    user_id, satisfaction, p_return_next_day, logit_* (its parts), sat_* (satisfaction parts),
    satisfaction_shift, discovered_interests, publish_rate (see the module docstring).
    """
    if table not in TRUTH_TABLES:
        raise ValueError(f"unknown ground-truth table {table!r}; one of {TRUTH_TABLES}")
    parts = sorted((Path(ground_truth_dir) / table).glob("dt=*/part-0.parquet"))
    if not parts:
        raise FileNotFoundError(f"no {table} partitions under {ground_truth_dir}")
    frames = [
        pq.read_table(p).to_pandas().assign(dt=dt.date.fromisoformat(p.parent.name.removeprefix("dt=")))
        for p in parts
    ]
    return pd.concat(frames, ignore_index=True)
