"""The distillation gate (docs/METHODS.md "Distillation set and gate") on synthetic days with a known truth: users in segments
shaped like the configured ones (overlapping, 4% to 25% of the users, some users in none),
exposures = distinct (user, item) keys with a latent true probability per head (base rates from 30%
clicks to 1% follows), labels ~ Bernoulli(true p), a clean ranker predicting the true p with noise
and a small bias that change every day (nightly retraining). Clean days pass; every planted fault
of FAULTS, and bugs outside that list, are caught by the expectation meant for them, alerted and
documented."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from models.ranking.faults import inject
from tasks.core.config import ALL, FAULTS, RANKING_HEADS, DistillationGateConfig, PlatformConfig
from tasks.core.eval_metrics import auc
from tasks.ops.alerts import read_alerts
from tasks.ranking import distillation
from tasks.ranking import gate as distillation_gate

RATES = {"click": 0.3, "like": 0.06, "favorite": 0.03, "share": 0.02, "comment": 0.025, "follow": 0.01,
         "long_view": 0.15}
SEGMENT_SHARES = {"new_users": 0.08, "low_activity": 0.25, "female_18_24": 0.15, "male_18_24_tier2": 0.04}
USERS, ITEMS, EXPOSURES = 1500, 1000, 20_000
START = dt.date(2026, 1, 1)
H = len(RANKING_HEADS)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class World:
    """Latent truth: logit p(u, i, head) = base(head) + user effect + item effect + the effects of
    the user's segments (female_18_24 and male_18_24_tier2 exclusive, the others independent)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.base = np.log([RATES[h] / (1 - RATES[h]) for h in RANKING_HEADS])
        draw = rng.random(USERS)
        self.member = {  # segment -> (USERS,) bool
            "new_users": rng.random(USERS) < SEGMENT_SHARES["new_users"],
            "low_activity": rng.random(USERS) < SEGMENT_SHARES["low_activity"],
            "female_18_24": draw < SEGMENT_SHARES["female_18_24"],
            "male_18_24_tier2": draw > 1 - SEGMENT_SHARES["male_18_24_tier2"],
        }
        self.user_effect = rng.normal(0, 0.5, (USERS, H))
        self.item_effect = rng.normal(0, 0.5, (ITEMS, H))
        self.user_effect += sum(np.outer(m, rng.normal(0, 0.3, H)) for m in self.member.values())
        self.segments = pd.DataFrame([(u, s) for s, m in self.member.items() for u in np.flatnonzero(m)],
                                     columns=["user_id", "segment"])

    def logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.base + self.user_effect[users] + self.item_effect[items]

    def day(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Day i's exposures (distinct keys): user ids, item ids, the clean ranker's predictions
        (noise sd 0.05-0.25 and a bias sd 0.05 per head in logits, both new every day), the labels."""
        rng = np.random.default_rng(1000 + i)
        keys = rng.choice(USERS * ITEMS, EXPOSURES, replace=False)
        users, items = keys // ITEMS, keys % ITEMS
        logits = self.logits(users, items)
        labels = (rng.random(logits.shape) < _sigmoid(logits)).astype(np.float32)
        noise = rng.normal(0, rng.uniform(0.05, 0.25), logits.shape) + rng.normal(0, 0.05, H)
        return users, items, _sigmoid(logits + noise).astype(np.float32), labels


def scored_frame(users: np.ndarray, items: np.ndarray, preds: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    data: dict[str, np.ndarray] = {"user_id": users, "item_id": items}
    for k, h in enumerate(RANKING_HEADS):
        data[f"p_{h}"] = preds[:, k]
        data[f"y_{h}"] = labels[:, k]
    return pd.DataFrame(data)


def exposure_keys(users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"user_id": users, "item_id": items})


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


# ---- the planted faults and the statistics -----------------------------------------------------


def test_inject_every_fault(world: World) -> None:
    rng = np.random.default_rng(3)
    users, items, p, y = world.day(0)
    scored = scored_frame(users, items, p, y).iloc[:1000]
    preds = [f"p_{h}" for h in RANKING_HEADS]
    keys = ["user_id", "item_id"]
    for kind in FAULTS:
        out = inject(scored, kind, np.random.default_rng(0), world.segments)
        assert list(out.columns) == list(scored.columns) and out is not scored
        assert (out[preds].dtypes == np.float32).all()
    p = scored[preds].to_numpy()
    assert inject(scored, "none", rng).equals(scored)
    assert np.allclose(inject(scored, "scaled_x3", rng)[preds], np.minimum(3 * p, 1))
    assert np.all(inject(scored, "constant_half", rng)[preds] == 0.5)
    shuffled = inject(scored, "shuffled", rng)[preds].to_numpy()
    assert not np.array_equal(shuffled, p) and np.array_equal(np.sort(shuffled, axis=0), np.sort(p, axis=0))
    assert inject(scored, "nan_5pct", rng)[preds].isna().to_numpy().sum() == round(0.05 * p.size)
    leaked = inject(scored, "leaked_labels", rng)[preds].to_numpy()
    assert np.allclose(leaked, 0.98 * scored[[f"y_{h}" for h in RANKING_HEADS]].to_numpy() + 0.01)
    assert np.allclose(inject(scored, "shifted_0_2", rng)[preds], np.clip(p + 0.2, 0, 1))

    duplicated = inject(scored, "duplicated_5pct", rng)
    assert len(duplicated) == len(scored) and (~duplicated.duplicated(keys)).sum() == len(scored) - 50
    assert duplicated.merge(scored).shape == duplicated.shape  # whole rows copied, nothing invented
    for kind, column in (("wrong_user_10pct", "user_id"), ("wrong_item_10pct", "item_id")):
        out = inject(scored, kind, rng)
        changed = out[column].to_numpy() != scored[column].to_numpy()
        assert 80 <= changed.sum() <= 100  # 10% of the rows (a few get a row of the same id back)
        assert out.drop(columns=column).equals(scored.drop(columns=column))

    scaled = inject(scored, "segment_x3", rng, world.segments)
    largest = world.segments[world.segments.user_id.isin(scored.user_id)].segment.value_counts().idxmax()
    members = scored.user_id.isin(world.segments.user_id[world.segments.segment == largest]).to_numpy()
    assert largest == "low_activity"
    assert np.allclose(scaled[preds].to_numpy()[members], np.minimum(3 * p[members], 1))
    assert np.array_equal(scaled[preds].to_numpy()[~members], p[~members])
    with pytest.raises(ValueError, match="needs the users' segments"):
        inject(scored, "segment_x3", rng)
    with pytest.raises(ValueError, match="unknown fault"):
        inject(scored, "bogus", rng)


def test_statistics() -> None:
    """The exact Poisson interval, DeLong's AUC standard error against a bootstrap, and a
    calibration interval that narrows as the slice grows."""
    low, high = distillation_gate.poisson_interval(np.array([0, 10, 100]), 0.05)
    np.testing.assert_allclose(low, [0, 4.7954, 81.3639], atol=1e-3)  # Garwood's table
    np.testing.assert_allclose(high, [3.6889, 18.3904, 121.6268], atol=1e-3)

    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.05
    p = rng.normal(y * 0.8, 1)
    boot = []
    for _ in range(300):
        at = rng.integers(0, len(y), len(y))
        boot.append(auc(y[at], p[at]))
    assert distillation_gate.auc_standard_error(y, p) == pytest.approx(np.std(boot), rel=0.15)
    assert np.isnan(distillation_gate.auc_standard_error(np.array([1, 0, 0]), np.array([0.3, 0.2, 0.1])))

    # one head, predictions 1.4x the rate: a small slice cannot tell, a large one can
    n = np.array([200, 2000, 20000])
    frames = [pd.DataFrame({"user_id": np.arange(k), "p_click": np.full(k, 0.14), "y_click": np.arange(k) % 10 == 0})
              for k in n]
    cal = pd.concat([distillation_gate.calibration_frame(f, None, 0.001, heads=("click",)) for f in frames])
    assert np.allclose(cal.ratio, 1.4)
    assert (np.diff(cal.ratio_high - cal.ratio_low) < 0).all()
    assert cal.ratio_low.iloc[0] < 1 < cal.ratio_low.iloc[2]


def test_gate_config_validated() -> None:
    for bad in ({"calibration_band": (1.1, 2.0)}, {"calibration_band": (0.5, 0.9)}, {"auc_band": (0.9, 0.6)},
                {"alpha": 0}, {"max_auc_drop": -0.01}):
        with pytest.raises(ValidationError):
            DistillationGateConfig(**bad)


def test_sixty_clean_days_stay_inside_their_bounds(world: World, record_property: pytest.RecordProperty) -> None:
    """The slices' statistics of 60 clean days (no GX: the expectations' comparisons) against the
    shipped thresholds: no calibration interval outside the band, no AUC below its floor or band.
    The margins left are recorded."""
    gate = DistillationGateConfig()
    previous = None
    margins: dict[str, list[float]] = {"ratio_low": [], "ratio_high": [], "auc_over_floor": [], "auc_band": []}
    for i in range(60):
        scored = scored_frame(*world.day(i))
        cal = distillation_gate.calibration_frame(scored, world.segments, gate.alpha)
        ranking = distillation_gate.ranking_frame(scored, gate.auc_min_positives)
        aucs = distillation_gate.auc_floors(ranking, previous, gate.max_auc_drop, gate.alpha)
        margins["ratio_low"].append(gate.calibration_band[1] - cal.ratio_low.max())
        margins["ratio_high"].append(cal.ratio_high.min() - gate.calibration_band[0])
        margins["auc_band"].append(min(aucs.auc.min() - gate.auc_band[0], gate.auc_band[1] - aucs.auc.max()))
        if previous is not None:
            margins["auc_over_floor"].append((aucs.auc - aucs.auc_floor).min())
        assert len(cal) == H * (1 + len(SEGMENT_SHARES)) and aucs.auc_se.notna().all()
        previous = ranking
    worst = {k: round(min(v), 4) for k, v in margins.items()}
    record_property("smallest_margins", worst)
    assert all(v > 0 for v in worst.values()), worst


def test_ten_clean_days_pass(platform: PlatformConfig, world: World) -> None:
    previous = None
    for i in range(10):
        users, items, clean, labels = world.day(i)
        scored = scored_frame(users, items, clean, labels)
        outcome = distillation_gate.check(platform, START + dt.timedelta(days=i), "ranker-v1", scored,
                                          exposure_keys(users, items), world.segments, previous)
        assert outcome.success, outcome.failed_expectations
        # rows (+ 7 KLs with a previous day); calibration per head and bound, AUC (+ its floor), not-nulls
        assert outcome.evaluated == 6 + 4 * H + (H if previous is not None else 0) + 2 * H + 3 + (previous is not None)
        assert outcome.alert is None
        previous = scored
    assert not [a for a in read_alerts(platform) if a["source"] == "distillation_gate"]
    rows = gate_rows(platform)
    assert len(rows) == 10 and rows["passed"].all()
    assert Path(outcome.data_docs).is_file()
    pages = list(Path(outcome.data_docs).parent.glob("validations/distillation_*/*/*/*.html"))
    assert len(pages) == 10 * 2  # every run's pages kept: rows and slices
    slices = pd.read_parquet(distillation_gate.gx_root(platform) / "frames" / "2026-01-10" / "ranker-v1" / "slices.parquet")
    assert set(slices.segment) == {ALL, *SEGMENT_SHARES} and slices.auc_floor.notna().sum() == H


# ---- planted bugs ------------------------------------------------------------------------------

TOO_HIGH = "slices:expect_column_values_to_be_between(ratio_low)"  # calibration: predictions too high
TOO_LOW = "slices:expect_column_values_to_be_between(ratio_high)"  # calibration: predictions too low
AUC = "slices:expect_column_values_to_be_between(auc)"
AUC_DROP = "slices:expect_column_pair_values_a_to_be_greater_than_b(auc,auc_floor)"
DUPLICATES = "rows:expect_compound_columns_to_be_unique(user_id,item_id)"
NOT_EXPOSED = "rows:expect_column_values_to_be_in_set(exposed)"
ROW_COUNT = "rows:expect_table_row_count_to_be_between"
FAULT_CATCHERS = {  # what must catch each fault (other checks may fail too)
    "scaled_x3": TOO_HIGH,
    "constant_half": AUC,
    "shuffled": AUC,
    "nan_5pct": "rows:expect_column_values_to_not_be_null(p_click)",
    "leaked_labels": AUC,
    "shifted_0_2": TOO_HIGH,
    "duplicated_5pct": DUPLICATES,
    "wrong_user_10pct": NOT_EXPOSED,
    "wrong_item_10pct": NOT_EXPOSED,
    "segment_x3": TOO_HIGH,
}


def _observed(outcome: distillation_gate.GateOutcome, check: str) -> dict:
    """What the failures of `check` observed, merged (slices: slice -> value; rows: counts and keys)."""
    out: dict = {}
    for f in outcome.failed:
        if distillation_gate.check_name(f) == check:
            out |= f["observed"]
    return out


@pytest.mark.parametrize("kind", [f for f in FAULTS if f != "none"])
def test_fault_caught(platform: PlatformConfig, clean_pair: tuple, world: World, kind: str,
                      record_property: pytest.RecordProperty) -> None:
    previous, (users, items, clean, labels) = clean_pair
    scored = inject(scored_frame(users, items, clean, labels), kind, np.random.default_rng(11), world.segments)
    version = f"ranker-{kind}"
    outcome = distillation_gate.check(platform, "2026-01-02", version, scored, exposure_keys(users, items),
                                      world.segments, previous)
    record_property("caught_by", outcome.caught_by)
    _assert_caught(platform, outcome, version)
    assert FAULT_CATCHERS[kind] in outcome.caught_by, outcome.failed_expectations
    observed = _observed(outcome, FAULT_CATCHERS[kind])
    if kind == "segment_x3":  # the scaled segment's slices fail, on every head
        assert {f"{h} / low_activity" for h in RANKING_HEADS} <= set(observed), observed
    if kind in ("duplicated_5pct", "wrong_user_10pct", "wrong_item_10pct"):  # the exposures are named
        assert observed["unexpected_count"] > 0 and len(observed["partial_unexpected_keys"]) == 5, observed


def _swap_heads(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
    return scored.rename(columns={"p_click": "p_like", "p_like": "p_click"})


def _one_minus_p(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
    return scored.assign(**{f"p_{h}": 1 - scored[f"p_{h}"] for h in RANKING_HEADS})


def _segment_scaled(segment: str, factor: float):
    def plant(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
        rows = world.member[segment][scored.user_id.to_numpy()]
        out = scored.copy()
        for h in RANKING_HEADS:
            out.loc[rows, f"p_{h}"] = np.minimum(out.loc[rows, f"p_{h}"] * factor, 1)
        return out
    return plant


def _duplicates_appended(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
    return pd.concat([scored, scored.sample(frac=0.05, random_state=1)], ignore_index=True)


def _users_swapped_1pct(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
    """Pairs of rows exchange their users (100 pairs): the row count and the set of users stay."""
    a = rng.choice(len(scored), 200, replace=False).reshape(2, -1)
    users = scored.user_id.to_numpy(copy=True)
    users[a[0]], users[a[1]] = users[a[1]], users[a[0]]
    return scored.assign(user_id=users)


def _wrong_item_0_5pct(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
    rows = rng.choice(len(scored), 100, replace=False)
    items = scored.item_id.to_numpy(copy=True)
    items[rows] = rng.integers(0, ITEMS, len(rows))
    return scored.assign(item_id=items)


def _scored_for(world: World, scored: pd.DataFrame, users: np.ndarray, items: np.ndarray,
                rng: np.random.Generator) -> pd.DataFrame:
    """The clean ranker's predictions for other (user, item) pairs, on the same rows and keys."""
    logits = world.logits(users, items) + rng.normal(0, 0.15, (len(users), H))
    return scored.assign(**{f"p_{h}": _sigmoid(logits[:, k]) for k, h in enumerate(RANKING_HEADS)})


def _user_features_wrong(share: float):
    """Keys intact, but the predictions of `share` of the rows computed for another user."""
    def plant(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
        users = scored.user_id.to_numpy()
        users = np.where(rng.random(len(users)) < share, rng.integers(0, USERS, len(users)), users)
        return _scored_for(world, scored, users, scored.item_id.to_numpy(), rng)
    return plant


def _item_effect_lost(scored: pd.DataFrame, world: World, rng: np.random.Generator) -> pd.DataFrame:
    """A feature pipeline lost the item side: predictions from the user side only (still ranks)."""
    logits = world.base + world.user_effect[scored.user_id.to_numpy()]
    return scored.assign(**{f"p_{h}": _sigmoid(logits[:, k]) for k, h in enumerate(RANKING_HEADS)})


BUGS = {  # bug -> (plant, what must catch it, what must not fail)
    "heads_swapped": (_swap_heads, TOO_HIGH, None),
    "one_minus_p": (_one_minus_p, AUC, None),
    "low_activity_x0_3": (_segment_scaled("low_activity", 0.3), TOO_LOW, None),
    "male_18_24_tier2_x3": (_segment_scaled("male_18_24_tier2", 3), TOO_HIGH, None),  # 4% of the users
    "female_18_24_x0_25": (_segment_scaled("female_18_24", 0.25), TOO_LOW, None),
    "duplicates_appended_5pct": (_duplicates_appended, DUPLICATES, None),
    "users_swapped_1pct": (_users_swapped_1pct, NOT_EXPOSED, ROW_COUNT),
    "wrong_item_0_5pct": (_wrong_item_0_5pct, NOT_EXPOSED, ROW_COUNT),
    "user_features_wrong_50pct": (_user_features_wrong(0.5), AUC_DROP, AUC),
    "item_effect_lost": (_item_effect_lost, AUC_DROP, AUC),
}
SEGMENT_OF_BUG = {"low_activity_x0_3": "low_activity", "male_18_24_tier2_x3": "male_18_24_tier2",
                  "female_18_24_x0_25": "female_18_24"}  # the slices that fail, and only they


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_bug_outside_the_list_caught(platform: PlatformConfig, clean_pair: tuple, world: World, bug: str,
                                     record_property: pytest.RecordProperty) -> None:
    previous, (users, items, clean, labels) = clean_pair
    plant, catcher, passing = BUGS[bug]
    version = f"ranker-{bug}"
    scored = plant(scored_frame(users, items, clean, labels), world, np.random.default_rng(5))
    outcome = distillation_gate.check(platform, "2026-01-02", version, scored, exposure_keys(users, items),
                                      world.segments, previous)
    record_property("caught_by", outcome.caught_by)
    _assert_caught(platform, outcome, version)
    assert catcher in outcome.caught_by, outcome.failed_expectations
    assert passing not in outcome.caught_by, outcome.failed_expectations
    if bug in SEGMENT_OF_BUG:  # only the segment's slices fail: the overall calibration stays inside its band
        failing = sorted(_observed(outcome, catcher))
        assert failing and all(s.endswith(f"/ {SEGMENT_OF_BUG[bug]}") for s in failing), failing
        record_property("failing_slices", failing)


def test_half_unscored_then_rerun(platform: PlatformConfig, clean_pair: tuple, world: World,
                                  record_property: pytest.RecordProperty) -> None:
    """Half the exposures unscored: coverage fails. The fixed re-run of the same (day, version)
    passes and replaces the gate row; the GX project holds each definition once; both runs' data
    docs stay."""
    previous, (users, items, clean, labels) = clean_pair
    full = scored_frame(users, items, clean, labels)
    keys = exposure_keys(users, items)
    first = distillation_gate.check(platform, "2026-01-02", "ranker-v2", full.iloc[: EXPOSURES // 2], keys,
                                    world.segments, previous)
    record_property("caught_by", first.caught_by)
    _assert_caught(platform, first, "ranker-v2")
    assert first.caught_by == [ROW_COUNT]
    assert first.failed[0]["observed"] == EXPOSURES // 2
    assert first.failed[0]["kwargs"] == {"min_value": EXPOSURES, "max_value": EXPOSURES}

    second = distillation_gate.check(platform, "2026-01-02", "ranker-v2", full, keys, world.segments, previous)
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


# ---- a closed-loop day: the ranker chose most exposures ---------------------------------------


def test_first_served_day_is_judged_without_the_organic_regime(platform: PlatformConfig, clean_pair: tuple,
                                                               world: World) -> None:
    """The first day served by the ranker after an organic accepted day, its predictions on its own
    picks 3x their true rate (selection, not a bug). Unflagged, it fails calibration. With 70% of
    the exposures flagged `chosen`, calibration reads the other 30% and the day passes, while the
    predictions scaled x3 everywhere (a bug) are still caught. With (nearly) every exposure chosen
    the calibration band is not judged and the day passes, a shuffled ranker is still caught by the
    AUC band; the next served day, judged against this one (same regime), fails the band again."""
    previous, (users, items, clean, _) = clean_pair
    rng = np.random.default_rng(5)
    true_p = _sigmoid(world.logits(users, items))
    keys = exposure_keys(users, items)

    def served_day(chosen: np.ndarray) -> pd.DataFrame:
        p = np.where(chosen[:, None], true_p / 3, true_p)  # the picks' true rates: a third of the prediction
        return scored_frame(users, items, clean, (rng.random(p.shape) < p).astype(np.float32))

    def gate(version: str, scored: pd.DataFrame, chosen: np.ndarray | None, before: pd.DataFrame):
        flagged = keys if chosen is None else keys.assign(chosen=chosen)
        return distillation_gate.check(platform, "2026-01-02", version, scored, flagged, world.segments, before)

    chosen = rng.random(EXPOSURES) < 0.7
    scored = served_day(chosen)
    blind = gate("ranker-blind", scored, None, previous)
    assert not blind.success and TOO_HIGH in blind.caught_by, blind.failed_expectations
    served = gate("ranker-served", scored, chosen, previous)
    assert served.success, served.failed_expectations
    frames = distillation_gate.gx_root(platform) / "frames" / "2026-01-02"
    slices = pd.read_parquet(frames / "ranker-served" / "slices.parquet")
    overall = slices[(slices.check == "calibration") & (slices.segment == ALL)].set_index("head")
    assert (overall.n == (~chosen).sum()).all()
    assert overall.loc["click", "positives"] == scored.y_click[~chosen].sum()
    assert overall.loc["click", "mean_prediction"] == pytest.approx(clean[~chosen, 0].astype(np.float64).mean())
    rows = pd.read_parquet(frames / "ranker-served" / "rows.parquet")
    assert (rows.chosen.to_numpy() == chosen).all() and (rows.reference.to_numpy() == ~chosen).all()
    x3 = gate("ranker-x3", inject(scored, "scaled_x3", np.random.default_rng(11), world.segments), chosen, previous)
    assert not x3.success and TOO_HIGH in x3.caught_by, x3.failed_expectations

    every = np.ones(EXPOSURES, dtype=bool)
    every[:5] = False  # 5 exposures not chosen: too few positives to calibrate on
    scored = served_day(every)
    first = gate("ranker-first", scored, every, previous)
    assert first.success, first.failed_expectations
    shuffled = gate("ranker-shuffled", inject(scored, "shuffled", np.random.default_rng(11), world.segments), every,
                    previous)
    assert not shuffled.success and AUC in shuffled.caught_by, shuffled.failed_expectations
    second = gate("ranker-second", served_day(every), every, scored.assign(chosen=every))
    assert not second.success and TOO_HIGH in second.caught_by, second.failed_expectations


def test_gate_day_compares_only_with_a_steady_served_day(platform: PlatformConfig, world: World) -> None:
    """Through the warehouse (`gate_day`): day 1 organic, days 2-4 served (a model's channel on
    every impression). Day 2 (the switch) is judged without drift, AUC floor or calibration band,
    day 3 without comparisons with day 2 (the first served day is no reference), day 4 against
    day 3: drift per head and the AUC floor come back."""
    days = [START + dt.timedelta(days=i) for i in range(4)]
    platform.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(platform.warehouse_path)) as con:
        con.execute("create schema raw")
        con.execute("create table raw.events (event_type varchar, dt date, user_id bigint, item_id bigint, "
                    "channel varchar)")
        for i, day in enumerate(days):
            users, items, clean, labels = world.day(i)
            keys = exposure_keys(users, items)
            con.register("scored", scored_frame(users, items, clean, labels).assign(day=day, version=f"ranker-{i}"))
            con.register("keys", keys.assign(day=day, channel=None if i == 0 else "itemcf"))
            if i == 0:
                con.execute("create table distillation_predictions as select * from scored")
                con.execute("create table ranking_exposures as select day, user_id, item_id from keys")
            else:
                con.execute("insert into distillation_predictions by name select * from scored")
                con.execute("insert into ranking_exposures select day, user_id, item_id from keys")
            con.execute("insert into raw.events select 'impression', day, user_id, item_id, channel from keys")
    evaluated = []
    for day in days:
        outcome = distillation.gate_day(platform, day)
        assert outcome.success, outcome.failed_expectations
        evaluated.append(outcome.evaluated)
        floors = pd.read_parquet(distillation_gate.gx_root(platform) / "frames" / day.isoformat()
                                 / outcome.version / "slices.parquet").auc_floor
        assert floors.notna().any() == (day == days[3]), day
    alone = 6 + 4 * H + 2 * H + 1 + 2  # rows; calibration (not-null, a bound per head); AUC (not-null, band)
    assert evaluated == [alone, alone - 2 * H - 1, alone, alone + H + 1]
