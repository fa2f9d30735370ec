"""The distillation gate (PLAYBOOK §3, §7) on synthetic days with a known truth: users in 3 segments,
exposures with a latent true probability per head (base rates from 30% clicks to 1% follows),
labels ~ Bernoulli(true p), a clean ranker predicting the true p with small noise. Clean days pass;
every planted fault of FAULTS, and bugs outside that list, are caught, alerted and documented."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from models.faults import inject
from tasks import distillation_gate
from tasks.alerts import read_alerts
from tasks.config import FAULTS, RANKING_HEADS, PlatformConfig

RATES = {"click": 0.3, "like": 0.06, "favorite": 0.03, "share": 0.02, "comment": 0.025, "follow": 0.01,
         "long_view": 0.15}
SEGMENTS = ("young", "adult", "senior")
USERS, ITEMS, EXPOSURES = 1500, 1000, 20_000
START = dt.date(2026, 1, 1)
H = len(RANKING_HEADS)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class World:
    """Latent truth: logit p(u, i, head) = base(head) + user effect + item effect + segment effect."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.base = np.log([RATES[h] / (1 - RATES[h]) for h in RANKING_HEADS])
        self.segment_of = rng.integers(0, len(SEGMENTS), USERS)
        self.user_effect = rng.normal(0, 0.5, (USERS, H))
        self.item_effect = rng.normal(0, 0.5, (ITEMS, H))
        self.segment_effect = rng.normal(0, 0.3, (len(SEGMENTS), H))
        self.segments = pd.DataFrame({"user_id": np.arange(USERS),
                                      "segment": np.array(SEGMENTS)[self.segment_of]})

    def day(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Day i's exposures: user ids, item ids, the clean ranker's predictions, the labels."""
        rng = np.random.default_rng(1000 + i)
        users = rng.integers(0, USERS, EXPOSURES)
        items = rng.integers(0, ITEMS, EXPOSURES)
        logits = self.base + self.user_effect[users] + self.item_effect[items] + self.segment_effect[self.segment_of[users]]
        labels = (rng.random(logits.shape) < _sigmoid(logits)).astype(np.float32)
        clean = _sigmoid(logits + rng.normal(0, 0.1, logits.shape)).astype(np.float32)
        return users, items, clean, labels


def scored_frame(users: np.ndarray, items: np.ndarray, preds: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    data: dict[str, np.ndarray] = {"user_id": users, "item_id": items}
    for k, h in enumerate(RANKING_HEADS):
        data[f"p_{h}"] = preds[:, k]
        data[f"y_{h}"] = labels[:, k]
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def clean_pair(world: World) -> tuple[pd.DataFrame, tuple]:
    """Day 0's clean scored frame (the previous day) and day 1's raw arrays."""
    return scored_frame(*world.day(0)), world.day(1)


def gate_rows(cfg: PlatformConfig) -> pd.DataFrame:
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        return con.execute("select * from distillation_gate order by day, version").df()


def _assert_caught(cfg: PlatformConfig, outcome: distillation_gate.GateOutcome, version: str) -> list[dict]:
    assert not outcome.success
    assert outcome.failed
    assert Path(outcome.data_docs).is_file(), outcome.data_docs
    assert all(Path(distillation_gate._url_path(u)).is_file() for u in outcome.pages.values())
    alerts = [a for a in read_alerts(cfg) if a["source"] == "distillation_gate"]
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["kind"] == "data_quality"
    assert version in alert["title"] and "2026-01-02" in alert["title"]
    assert alert["details"]["failed_expectations"] == outcome.failed_expectations
    assert alert["details"]["data_docs"] == outcome.data_docs
    assert alert["links"]["data docs"].endswith("index.html")
    row = gate_rows(cfg).iloc[0]
    assert not row["passed"] and json.loads(row["failed_expectations"]) == outcome.failed_expectations
    return alerts


def test_inject_every_fault() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.6, (1000, H)).astype(np.float32)
    y = (rng.random((1000, H)) < p).astype(np.float32)
    for kind in FAULTS:
        out = inject(p, y, kind, np.random.default_rng(0))
        assert out.shape == p.shape and out.dtype == np.float32 and out is not p
    assert np.array_equal(inject(p, y, "none", rng), p)
    assert np.allclose(inject(p, y, "scaled_x3", rng), np.minimum(3 * p, 1))
    assert np.all(inject(p, y, "constant_half", rng) == 0.5)
    shuffled = inject(p, y, "shuffled", rng)
    assert not np.array_equal(shuffled, p) and np.array_equal(np.sort(shuffled, axis=0), np.sort(p, axis=0))
    assert np.isnan(inject(p, y, "nan_5pct", rng)).sum() == round(0.05 * p.size)
    assert np.allclose(inject(p, y, "leaked_labels", rng), 0.98 * y + 0.01)
    assert np.allclose(inject(p, y, "shifted_0_2", rng), np.clip(p + 0.2, 0, 1))
    with pytest.raises(ValueError, match="unknown fault"):
        inject(p, y, "bogus", rng)


def test_ten_clean_days_pass(platform: PlatformConfig, world: World) -> None:
    previous = None
    for i in range(10):
        scored = scored_frame(*world.day(i))
        outcome = distillation_gate.check(platform, START + dt.timedelta(days=i), "ranker-v1", scored,
                                          EXPOSURES, world.segments, previous)
        assert outcome.success, outcome.failed_expectations
        # rows (+ 7 KLs with a previous day); calibration per head, AUC, not-nulls
        assert outcome.evaluated == 4 + 4 * H + (H if previous is not None else 0) + H + 3
        assert outcome.alert is None
        previous = scored
    assert not [a for a in read_alerts(platform) if a["source"] == "distillation_gate"]
    rows = gate_rows(platform)
    assert len(rows) == 10 and rows["passed"].all()
    assert Path(outcome.data_docs).is_file()
    pages = list(Path(outcome.data_docs).parent.glob("validations/distillation_*/*/*/*.html"))
    assert len(pages) == 10 * 2  # every run's pages kept: rows and slices


CALIBRATION = "slices:expect_column_values_to_be_between(ratio)"
AUC = "slices:expect_column_values_to_be_between(auc)"
FAULT_CATCHERS = {  # what must catch each fault (other checks may fail too)
    "scaled_x3": CALIBRATION,
    "constant_half": AUC,
    "shuffled": AUC,
    "nan_5pct": "rows:expect_column_values_to_not_be_null(p_click)",
    "leaked_labels": AUC,
    "shifted_0_2": CALIBRATION,
}


@pytest.mark.parametrize("kind", [f for f in FAULTS if f != "none"])
def test_fault_caught(platform: PlatformConfig, clean_pair: tuple, world: World, kind: str,
                      record_property: pytest.RecordProperty) -> None:
    previous, (users, items, clean, labels) = clean_pair
    preds = inject(clean, labels, kind, np.random.default_rng(11))
    version = f"ranker-{kind}"
    outcome = distillation_gate.check(platform, "2026-01-02", version, scored_frame(users, items, preds, labels),
                                      EXPOSURES, world.segments, previous)
    record_property("caught_by", outcome.caught_by)
    _assert_caught(platform, outcome, version)
    assert FAULT_CATCHERS[kind] in outcome.caught_by, outcome.failed_expectations


def _swap_heads(p: np.ndarray, users: np.ndarray, world: World) -> np.ndarray:
    out = p.copy()
    a, b = RANKING_HEADS.index("click"), RANKING_HEADS.index("like")
    out[:, [a, b]] = p[:, [b, a]]
    return out


def _segment_scaled(p: np.ndarray, users: np.ndarray, world: World) -> np.ndarray:
    out = p.copy()
    out[world.segment_of[users] == 1] *= 0.3
    return out


BUGS = {
    "heads_swapped": (_swap_heads, CALIBRATION),
    "one_minus_p": (lambda p, users, world: 1 - p, AUC),
    "segment_x0_3": (_segment_scaled, CALIBRATION),
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_bug_outside_the_list_caught(platform: PlatformConfig, clean_pair: tuple, world: World, bug: str,
                                     record_property: pytest.RecordProperty) -> None:
    previous, (users, items, clean, labels) = clean_pair
    plant, catcher = BUGS[bug]
    version = f"ranker-{bug}"
    outcome = distillation_gate.check(platform, "2026-01-02", version,
                                      scored_frame(users, items, plant(clean, users, world), labels),
                                      EXPOSURES, world.segments, previous)
    record_property("caught_by", outcome.caught_by)
    _assert_caught(platform, outcome, version)
    assert catcher in outcome.caught_by, outcome.failed_expectations
    if bug == "segment_x0_3":  # the failing slices are the segment's, not 'all'
        failing = [s for f in outcome.failed if f["kwargs"].get("column") == "ratio" for s in f["observed"]]
        assert sorted(failing) == sorted(f"{h} / adult" for h in RANKING_HEADS), failing


def test_half_unscored_then_rerun(platform: PlatformConfig, clean_pair: tuple, world: World,
                                  record_property: pytest.RecordProperty) -> None:
    """Half the exposures unscored: coverage fails. The fixed re-run of the same (day, version)
    passes and replaces the gate row; the GX project holds each definition once; both runs' data
    docs stay."""
    previous, (users, items, clean, labels) = clean_pair
    full = scored_frame(users, items, clean, labels)
    first = distillation_gate.check(platform, "2026-01-02", "ranker-v2", full.iloc[: EXPOSURES // 2], EXPOSURES,
                                    world.segments, previous)
    record_property("caught_by", first.caught_by)
    _assert_caught(platform, first, "ranker-v2")
    assert first.caught_by == ["rows:expect_table_row_count_to_be_between"]
    assert first.failed[0]["observed"] == EXPOSURES // 2
    assert first.failed[0]["kwargs"] == {"min_value": EXPOSURES, "max_value": EXPOSURES}

    second = distillation_gate.check(platform, "2026-01-02", "ranker-v2", full, EXPOSURES, world.segments, previous)
    assert second.success and second.alert is None
    rows = gate_rows(platform)
    assert len(rows) == 1 and rows.iloc[0]["passed"] and json.loads(rows.iloc[0]["failed_expectations"]) == []
    gx_dir = distillation_gate.gx_root(platform) / "gx"
    assert sorted(p.name for p in (gx_dir / "checkpoints").glob("*.json")) == ["distillation_gate.json"]
    assert sorted(p.name for p in (gx_dir / "expectations").glob("*.json")) == ["distillation_rows.json",
                                                                                 "distillation_slices.json"]
    assert len(list((gx_dir / "validation_definitions").glob("*.json"))) == 2
    assets = yaml.safe_load((gx_dir / "great_expectations.yml").read_text())["fluent_datasources"]["distillation_frames"]["assets"]
    assert {name: list(a["batch_definitions"]) for name, a in assets.items()} == {"rows": ["gate"], "slices": ["gate"]}
    runs = Path(second.data_docs).parent / "validations" / "distillation_rows" / "2026-01-02__ranker-v2"
    assert len(list(runs.iterdir())) == 2
