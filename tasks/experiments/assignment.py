"""Assignment of users to experiment arms (docs/METHODS.md "Experiments").

Each layer hashes user ids with its own salt to a uniform u in [0, 1): the layer's experiments
hold consecutive slices of that range (in config order, each `traffic` wide) and split their slice
evenly over their arms. So a user's arm never changes from one day to the next, a user is in at
most one experiment per layer, and layers are independent of each other. Users are assigned
whether or not they are active; an experiment's arms differ only on its served days.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pandas as pd

from tasks.core.config import ExperimentConfig, PlatformConfig, StrategyConfig
from tasks.core.hashing import splitmix64
from tasks.core.warehouse import connect_writer

NOT_ASSIGNED = -1
ASSIGNMENTS_TABLE = "experiment_assignments"  # experiment, layer, user_id, arm, is_control
EXPERIMENTS_TABLE = "experiments"  # experiment, layer, start_day, end_day, traffic, control_arm, arms, metrics


def layer_unit(user_ids: np.ndarray, layer: str) -> np.ndarray:
    """u in [0, 1) of each user id in `layer`: splitmix64(user_id + salt(layer)), top 53 bits."""
    salt = int.from_bytes(hashlib.sha256(layer.encode()).digest()[:8], "little")
    return (splitmix64(user_ids, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def arm_index(cfg: PlatformConfig, experiment: ExperimentConfig, user_ids: np.ndarray) -> np.ndarray:
    """Each user's arm in `experiment` (index into its arms), NOT_ASSIGNED outside its slice."""
    offset = 0.0
    for e in cfg.experiments:
        if e.name == experiment.name:
            break
        if e.layer == experiment.layer:
            offset += e.traffic
    u = layer_unit(user_ids, experiment.layer) - offset
    inside = (u >= 0) & (u < experiment.traffic)
    arm = np.minimum((u / experiment.traffic * len(experiment.arms)).astype(np.int64), len(experiment.arms) - 1)
    return np.where(inside, arm, NOT_ASSIGNED)


def is_served(experiment: ExperimentConfig, day: dt.date) -> bool:
    """Whether the experiment's arms are served differently on `day`."""
    return experiment.start <= day and (experiment.end is None or day <= experiment.end)


def assignments(cfg: PlatformConfig, user_ids: np.ndarray) -> pd.DataFrame:
    """One row per (experiment, assigned user): experiment, layer, user_id, arm, is_control."""
    frames = []
    for e in cfg.experiments:
        arm = arm_index(cfg, e, user_ids)
        inside = arm != NOT_ASSIGNED
        names = np.array(list(e.arms), dtype=object)
        frames.append(pd.DataFrame({
            "experiment": e.name, "layer": e.layer, "user_id": np.asarray(user_ids, dtype=np.int64)[inside],
            "arm": names[arm[inside]], "is_control": arm[inside] == 0,
        }))
    columns = ["experiment", "layer", "user_id", "arm", "is_control"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def strategy_keys(cfg: PlatformConfig, user_ids: np.ndarray, day: dt.date) -> np.ndarray:
    """Each user's strategy key on `day`: the served arms it is in, as "experiment=arm" joined by
    "," in config order, or the default strategy's name when it is in none."""
    keys = np.full(len(user_ids), "", dtype=object)
    for e in cfg.experiments:
        if not is_served(e, day):
            continue
        arm = arm_index(cfg, e, user_ids)
        names = np.array(list(e.arms), dtype=object)
        inside = arm != NOT_ASSIGNED
        tag = np.where(inside, e.name + "=" + names[np.maximum(arm, 0)].astype(str), "")
        keys = np.where(inside & (keys != ""), keys + "," + tag, np.where(inside, tag, keys))
    return np.where(keys == "", cfg.serving.default_strategy, keys)


def strategy_of_key(cfg: PlatformConfig, key: str) -> StrategyConfig:
    """The strategy behind a key of `strategy_keys`: the default strategy, or each arm's override
    merged over the previous one's result, in config order (layers compose)."""
    if key == cfg.serving.default_strategy or not key:
        return cfg.serving.strategy(cfg.serving.default_strategy)
    strategy: StrategyConfig | None = None
    for part in key.split(","):
        name, arm = part.split("=", 1)
        strategy = cfg.arm_strategy(cfg.experiment(name), arm, on=strategy)
    assert strategy is not None
    return strategy


def experiments_frame(cfg: PlatformConfig) -> pd.DataFrame:
    """One row per configured experiment: its layer, served days, traffic, arms and metrics."""
    return pd.DataFrame(
        [{"experiment": e.name, "layer": e.layer, "start_day": e.start, "end_day": e.end, "traffic": e.traffic,
          "control_arm": e.control, "arms": ",".join(e.arms), "metrics": ",".join(e.metrics)}
         for e in cfg.experiments],
        columns=["experiment", "layer", "start_day", "end_day", "traffic", "control_arm", "arms", "metrics"],
    ).astype({"start_day": "datetime64[us]", "end_day": "datetime64[us]"})


def publish_assignments(cfg: PlatformConfig) -> dict[str, int]:
    """Rewrite the warehouse's experiments and assignments tables for every user in raw.users (a
    pure function of the config and the user ids, so a re-run gives the same tables)."""
    with connect_writer(cfg) as con:
        user_ids = con.execute("select distinct user_id from raw.users order by 1").fetchnumpy()["user_id"]
        rows, experiments = assignments(cfg, user_ids), experiments_frame(cfg)
        con.register("new_assignments", rows)
        con.register("new_experiments", experiments)
        con.execute("begin transaction")
        con.execute(f"create or replace table {ASSIGNMENTS_TABLE} (experiment varchar, layer varchar, "
                    "user_id bigint, arm varchar, is_control boolean)")
        con.execute(f"insert into {ASSIGNMENTS_TABLE} select * from new_assignments")
        con.execute(f"create or replace table {EXPERIMENTS_TABLE} (experiment varchar, layer varchar, "
                    "start_day date, end_day date, traffic double, control_arm varchar, arms varchar, metrics varchar)")
        con.execute(f"insert into {EXPERIMENTS_TABLE} select * from new_experiments")
        con.execute("commit")
    return {"experiments": len(experiments), "assignments": len(rows)}
