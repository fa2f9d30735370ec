"""Daily state snapshots: the World after day d, in ground_truth_dir/_state/dt=YYYY-MM-DD.npz.

A snapshot holds every carried array (users with their interests, items, follow edges, the recent
reactions window, the day) and a fingerprint of
the simulation-relevant config; a snapshot whose fingerprint differs is ignored. Only the
`state_snapshots_kept` most recent days are kept. The taxonomy is rebuilt from the config.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np

from tasks.core.atomic import atomic_write
from tasks.core.config import SimulatorConfig
from tasks.simulator.world import Items, Users, World

_NOT_SIMULATION = {"days", "state_snapshots_kept"}  # fields that do not change any day's output


def fingerprint(cfg: SimulatorConfig) -> str:
    """Hash of the config fields that shape the simulated days."""
    return hashlib.sha256(cfg.model_dump_json(exclude=_NOT_SIMULATION).encode()).hexdigest()


def state_dir(ground_truth_dir: Path) -> Path:
    """Where the snapshots live."""
    return Path(ground_truth_dir) / "_state"


def _path(ground_truth_dir: Path, day: dt.date) -> Path:
    return state_dir(ground_truth_dir) / f"dt={day.isoformat()}.npz"


def save_state(world: World, cfg: SimulatorConfig, ground_truth_dir: Path, day: dt.date) -> None:
    """Snapshot the world after `day` atomically, then prune to the most recent snapshots."""
    arrays = {
        **world.users.arrays("users."),
        **world.items.arrays("items."),
        "follows": world.follows,
        "last_day": np.int64(world.last_day),
        "reactions": world.reactions,
        "fingerprint": np.array(fingerprint(cfg)),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(_path(ground_truth_dir, day), write)
    for old in sorted(state_dir(ground_truth_dir).glob("dt=*.npz"))[: -cfg.state_snapshots_kept]:
        old.unlink(missing_ok=True)


def _load(path: Path, cfg: SimulatorConfig) -> World | None:
    with np.load(path) as npz:
        if str(npz["fingerprint"]) != fingerprint(cfg):
            return None
        arrays = {k: npz[k] for k in npz.files}
    return World(
        users=Users.from_arrays(arrays, "users."),
        items=Items.from_arrays(arrays, "items."),
        follows=arrays["follows"],
        last_day=int(arrays["last_day"]),
        reactions=arrays["reactions"],
    )


def latest_state_before(
    cfg: SimulatorConfig, ground_truth_dir: Path, day: dt.date
) -> tuple[dt.date, World] | None:
    """The most recent usable snapshot of a day before `day` (and that day), if any."""
    for path in sorted(state_dir(ground_truth_dir).glob("dt=*.npz"), reverse=True):
        snap_day = dt.date.fromisoformat(path.stem.removeprefix("dt="))
        if cfg.start_date <= snap_day < day and (world := _load(path, cfg)) is not None:
            return snap_day, world
    return None
