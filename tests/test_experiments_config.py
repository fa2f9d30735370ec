"""Experiments in the config and the assignment of users to arms (docs/METHODS.md "Experiments")."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from tasks.core.config import DEFAULT_CONFIG, PlatformConfig, load_config
from tasks.experiments.assignment import NOT_ASSIGNED, arm_index, assignments, strategy_keys, strategy_of_key

START = dt.date(2026, 1, 20)


def _cfg(experiments: list[dict]) -> PlatformConfig:
    base = load_config(DEFAULT_CONFIG).model_dump()
    return PlatformConfig.model_validate({**base, "experiments": experiments})


EXPERIMENTS = [
    {"name": "diversity", "start": START, "traffic": 0.4,
     "arms": {"control": {}, "mmr": {"diversity": {"method": "mmr"}}, "none": {"base": "no_diversity"}}},
    {"name": "exploration", "start": START, "traffic": 0.5,
     "arms": {"control": {}, "more": {"exploration": {"share": 0.1}}}},
    {"name": "follow_bonus", "layer": "fusion", "start": START + dt.timedelta(days=3),
     "arms": {"control": {}, "off": {"fusion": {"bonuses": {"follow": {"a": 0.0}}}}}},
]


def test_arms_split_each_layer_and_layers_are_independent() -> None:
    cfg = _cfg(EXPERIMENTS)
    users = np.arange(1, 60_001)
    arms = {e.name: arm_index(cfg, e, users) for e in cfg.experiments}
    # One experiment per layer at most: the two `main` experiments never share a user.
    assert not ((arms["diversity"] != NOT_ASSIGNED) & (arms["exploration"] != NOT_ASSIGNED)).any()
    # Each experiment holds its traffic share, split evenly over its arms (binomial tests).
    for e in cfg.experiments:
        inside = arms[e.name] != NOT_ASSIGNED
        assert stats.binomtest(int(inside.sum()), len(users), e.traffic).pvalue > 1e-3
        counts = np.bincount(arms[e.name][inside], minlength=len(e.arms))
        assert stats.chisquare(counts).pvalue > 1e-3
    # Layers are independent: the fusion arm does not depend on the main-layer arm.
    main = np.where(arms["diversity"] != NOT_ASSIGNED, arms["diversity"], 3 + arms["exploration"])
    table = np.histogram2d(main, arms["follow_bonus"], bins=[np.arange(-1.5, 6), np.arange(-0.5, 2)])[0]
    table = table[table.sum(axis=1) > 0]
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # Stable: the same users get the same arms, whatever else is asked with them.
    again = arm_index(cfg, cfg.experiments[0], users[::-7])
    np.testing.assert_array_equal(again, arms["diversity"][::-7])


def test_assignment_rows_and_strategy_keys_compose_layers() -> None:
    cfg = _cfg(EXPERIMENTS)
    users = np.arange(1, 2_001)
    rows = assignments(cfg, users)
    assert set(rows.columns) == {"experiment", "layer", "user_id", "arm", "is_control"}
    assert (rows.groupby(["layer", "user_id"]).size() == 1).all()
    assert (rows.is_control == (rows.arm == "control")).all()
    # Before any start: everyone gets the default strategy.
    assert set(strategy_keys(cfg, users, START - dt.timedelta(days=1))) == {"default"}
    keys = strategy_keys(cfg, users, START + dt.timedelta(days=5))
    by_user = rows.pivot(index="user_id", columns="experiment", values="arm")
    for uid, key in zip(users[:300], keys[:300]):
        expected = [f"{e}={by_user.loc[uid, e]}" for e in ("diversity", "exploration", "follow_bonus")
                    if uid in by_user.index and isinstance(by_user.loc[uid, e], str)]
        assert key == (",".join(expected) or "default")
    # A key's strategy is every arm's override applied in config order.
    s = strategy_of_key(cfg, "diversity=mmr,follow_bonus=off")
    assert s.diversity.method == "mmr" and s.fusion.bonuses["follow"].a == 0.0
    assert s.fusion.bonuses["fan"].a == cfg.serving.strategy("default").fusion.bonuses["fan"].a
    none = strategy_of_key(cfg, "diversity=none")
    assert none.diversity == cfg.serving.strategy("no_diversity").diversity


@pytest.mark.parametrize(("experiments", "message"), [
    ([{**EXPERIMENTS[0], "traffic": 0.7}, EXPERIMENTS[1]], "layer 'main' holds more than all users"),
    ([{**EXPERIMENTS[0], "arms": {"control": {}}}], "at least two arms"),
    ([{**EXPERIMENTS[0], "arms": {"control": {}, "x": {"diversity": {"methd": "mmr"}}}}], "arms.x"),
    ([{**EXPERIMENTS[0], "base_strategy": "nope"}], "unknown strategy 'nope'"),
    ([EXPERIMENTS[1], EXPERIMENTS[1]], "duplicate experiment names"),
])
def test_bad_experiments_name_the_key(experiments: list[dict], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _cfg(experiments)
