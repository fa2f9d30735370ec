"""The nightly model gate's paired comparison (docs/METHODS.md "Nightly retrieval gate and publish"): the bootstrap
CI of the relative Recall drop against the delta method and an exact case, its determinism, per-user recall
against `recall_at_k`, and the gate over hand-written evaluation tables: a noisy but clean candidate
whose point drop exceeds max_recall_drop passes, a planted regression is rejected with the numbers
in its alert, a first version passes; on a closed-loop night the comparison with popularity is made on
the clicks no model chose, or skipped when too few users have one and a current version vouches."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from tasks.core import artifacts, registry
from tasks.core.config import ALL, PlatformConfig
from tasks.core.eval_metrics import recall_at_k, user_recall
from tasks.core.warehouse import connect
from tasks.ops.alerts import DataQualityRejected, read_alerts
from tasks.retrieval import nightly
from tasks.retrieval.evaluate import UNCHOSEN, write_results, write_user_recall

MODEL, K = "two_tower", 50
DS = dt.date(2026, 1, 20)


def _pair(n: int, drop: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user recalls of two versions, correlated (hits out of 4 truth items, 70% of users unchanged)."""
    rng = np.random.default_rng(seed)
    current = rng.binomial(4, 0.3, n) / 4
    other = rng.binomial(4, 0.3 * (1 - drop), n) / 4
    return np.where(rng.random(n) < 0.7, current * (1 - drop), other), current


def _delta_method(candidate: np.ndarray, current: np.ndarray, alpha: float) -> tuple[float, float]:
    """The normal CI of 1 - mean(a) / mean(b) by the delta method (a, b paired)."""
    ratio = candidate.mean() / current.mean()
    se = np.std(candidate - ratio * current, ddof=1) / np.sqrt(len(current)) / current.mean()
    z = norm.ppf(1 - alpha / 2)
    return 1 - ratio - z * se, 1 - ratio + z * se


def test_paired_ci_matches_the_delta_method() -> None:
    candidate, current = _pair(5000, 0.05, seed=1)
    got = nightly.paired_drop_ci(candidate, current, resamples=4000, alpha=0.05, seed=3)
    low, high = _delta_method(candidate, current, 0.05)
    assert got.n_users == 5000
    assert got.drop == pytest.approx(1 - candidate.mean() / current.mean(), abs=1e-12)
    assert got.low == pytest.approx(low, abs=0.1 * (high - low))
    assert got.high == pytest.approx(high, abs=0.1 * (high - low))
    assert got.low < got.drop < got.high


def test_a_constant_ratio_has_a_point_ci() -> None:
    """candidate = 0.9 x current for every user: every resample's drop is exactly 10%."""
    current = np.random.default_rng(0).random(300)
    got = nightly.paired_drop_ci(0.9 * current, current, resamples=200, alpha=0.01, seed=0)
    assert (got.drop, got.low, got.high) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)


def test_the_ci_is_deterministic_for_a_seed() -> None:
    candidate, current = _pair(800, 0.05, seed=2)
    first = nightly.paired_drop_ci(candidate, current, 1000, 0.01, seed=7)
    assert nightly.paired_drop_ci(candidate, current, 1000, 0.01, seed=7) == first
    other = nightly.paired_drop_ci(candidate, current, 1000, 0.01, seed=8)
    assert other != first and other.low == pytest.approx(first.low, abs=0.02)
    with pytest.raises(ValueError, match="same users"):
        nightly.paired_drop_ci(candidate[1:], current, 100, 0.01, seed=7)


def test_user_recall_averages_to_recall_at_k() -> None:
    rng = np.random.default_rng(4)
    retrieved = np.stack([rng.permutation(40)[:10] for _ in range(200)])
    retrieved[::7, 6:] = -1
    truth = [rng.choice(40, rng.integers(1, 6), replace=False) for _ in range(200)]
    per_user = user_recall(retrieved, truth, 5)
    assert per_user.mean() == pytest.approx(recall_at_k(retrieved, truth, 5), abs=1e-12)
    assert per_user[0] == len(set(retrieved[0, :5]) & set(truth[0])) / len(truth[0])


def _versions(cfg: PlatformConfig, current: bool) -> tuple[str, str | None]:
    """Empty candidate (and current) versions in the two-tower store."""
    store = registry.model_store(cfg, MODEL)
    old = artifacts.publish(store, lambda folder: {}, {"model": MODEL}).name if current else None
    return artifacts.publish(store, lambda folder: {}, {"model": MODEL}, make_current=False).name, old


def _evaluation(cfg: PlatformConfig, recalls: dict[str, np.ndarray], popularity: float,
                unchosen: tuple[int, dict[str, float], float] | None = None) -> None:
    """retrieval_eval and retrieval_eval_users rows of the night of DS for the given versions; with
    `unchosen` (users, each version's recall, popularity's), the rows of a closed-loop night's clicks
    that no model chose."""
    day = nightly.training_day(DS)
    users = np.arange(1, len(next(iter(recalls.values()))) + 1)
    run = {"day": day, "eval_days": 1, "train_window_days": cfg.retrieval.train_window_days, "segment": ALL, "k": K,
           "metric": "recall", "ci_low": None, "ci_high": None, "n_users": len(users), "below_min_users": False}
    rows = ([{**run, "channel": MODEL, "version": v, "value": r.mean()} for v, r in recalls.items()]
            + [{**run, "channel": "popularity", "version": "", "value": popularity}])
    if unchosen:
        n, versions, pop = unchosen
        extra = {**run, "metric": UNCHOSEN, "n_users": n}
        rows += ([{**extra, "channel": MODEL, "version": v, "value": r} for v, r in versions.items()]
                 + [{**extra, "channel": "popularity", "version": "", "value": pop}])
    write_results(cfg, pd.DataFrame(rows))
    write_user_recall(cfg, pd.concat([pd.DataFrame({"day": day, "channel": MODEL, "version": v, "k": K, "user_id": users,
                                                    "recall": r}) for v, r in recalls.items()]))


def _gate_table(cfg: PlatformConfig) -> pd.DataFrame:
    with connect(cfg, read_only=True) as con:
        return con.execute("select * from model_gate order by checked_at").df()


def test_a_noisy_clean_candidate_passes_a_planted_regression_is_rejected(platform: PlatformConfig) -> None:
    """812 users, a point drop above max_recall_drop (the former rule's rejection) but within noise: passed."""
    candidate, current = _versions(platform, current=True)
    cand_recall, cur_recall = _pair(812, 0.06, seed=5)
    _evaluation(platform, {candidate: cand_recall, current: cur_recall}, popularity=0.1)
    row = nightly.gate(platform, MODEL, candidate, DS)
    assert row["passed"] and row["recall_drop"] > platform.evaluation.max_recall_drop
    assert row["drop_ci_low"] <= platform.evaluation.max_recall_drop < row["drop_ci_high"]
    assert row["n_users"] == 812 and row["gate_reason"] in ("within noise", "drop beyond noise but below max_recall_drop 5.0%")
    assert row["recall_floor"] <= row["candidate_recall"]

    planted, _ = _versions(platform, current=False)
    broken = np.where(np.arange(812) % 5 == 0, cur_recall, 0.0)  # 4 users in 5 lose every hit
    _evaluation(platform, {planted: broken, current: cur_recall}, popularity=0.01)
    with pytest.raises(nightly.ModelRejected, match=r"drop \d+\.\d% \[CI \d+\.\d%, \d+\.\d%\]"):
        nightly.gate(platform, MODEL, planted, DS)
    alert = read_alerts(platform)[-1]
    assert planted in alert["title"]
    assert alert["details"]["summary"].startswith(f"Recall@50 {broken.mean():.3f} vs {cur_recall.mean():.3f}, drop ")
    assert alert["details"]["summary"].endswith("over 812 users: drop beyond noise and above max_recall_drop 5.0%")
    assert any("recall_floor" in f for f in alert["details"]["failed_expectations"])
    table = _gate_table(platform)
    assert list(table.passed) == [True, False]
    assert table.drop_ci_low.iloc[1] > platform.evaluation.max_recall_drop and (table.n_users == 812).all()
    assert artifacts.load(registry.model_store(platform, MODEL), planted).meta["evaluation"]["passed"] is False


def test_a_first_version_is_accepted_with_the_usual_checks(platform: PlatformConfig) -> None:
    candidate, _ = _versions(platform, current=False)
    _evaluation(platform, {candidate: np.full(50, 0.2)}, popularity=0.1)
    row = nightly.gate(platform, MODEL, candidate, DS)
    assert row["passed"] and row["current"] is None and row["drop_ci_low"] is None and row["recall_floor"] == 0
    assert nightly.describe_gate(row) == "Recall@50 0.200 over 50 users: first version: no current version to compare with"
    _evaluation(platform, {candidate: np.full(50, 0.05)}, popularity=0.1)
    with pytest.raises(nightly.ModelRejected, match="popularity.*no previous version: two_tower has none yet") as e:
        nightly.gate(platform, MODEL, candidate, DS)
    assert isinstance(e.value, DataQualityRejected)  # the DAGs fail it at once, without a retry
    assert read_alerts(platform)[-1]["title"].endswith("rejected; no previous version: two_tower has none yet")


def test_a_closed_loop_night_compares_with_popularity_on_the_clicks_no_model_chose(platform: PlatformConfig) -> None:
    """Served clicks favour popularity (0.7 on all clicks); on the 300 users' unchosen clicks the
    candidate beats it (0.25 vs 0.10): passed, the table says on which clicks."""
    candidate, current = _versions(platform, current=True)
    cand_recall, cur_recall = _pair(400, 0.0, seed=9)
    _evaluation(platform, {candidate: cand_recall, current: cur_recall}, popularity=0.7,
                unchosen=(300, {candidate: 0.25, current: 0.24}, 0.10))
    row = nightly.gate(platform, MODEL, candidate, DS)
    assert row["passed"] and row["baseline_clicks"] == "unchosen" and row["baseline_users"] == 300
    assert (row["candidate_baseline_recall"], row["popularity_recall"]) == (0.25, 0.10)

    _evaluation(platform, {candidate: cand_recall, current: cur_recall}, popularity=0.7,
                unchosen=(300, {candidate: 0.05, current: 0.24}, 0.10))
    with pytest.raises(nightly.ModelRejected, match="popularity"):
        nightly.gate(platform, MODEL, candidate, DS)


def test_too_few_unchosen_clicks_skip_the_comparison_when_a_current_version_vouches(platform: PlatformConfig) -> None:
    """12 users with unchosen clicks (< min_users 200): with a current version the night decides on
    the paired comparison alone and says so; a first version must beat popularity on all clicks."""
    candidate, current = _versions(platform, current=True)
    cand_recall, cur_recall = _pair(400, 0.0, seed=9)
    _evaluation(platform, {candidate: cand_recall, current: cur_recall}, popularity=0.7,
                unchosen=(12, {candidate: 0.0, current: 0.0}, 0.5))
    row = nightly.gate(platform, MODEL, candidate, DS)
    assert row["passed"] and row["baseline_clicks"] == nightly.INCONCLUSIVE and row["popularity_recall"] is None
    assert row["gate_reason"].endswith("popularity comparison skipped: 12 users with clicks no model chose "
                                       "(< min_users 200)")
    assert _gate_table(platform).baseline_users.iloc[-1] == 12


def test_on_a_served_night_the_feedback_sized_drop_passes_and_a_broken_candidate_is_still_rejected(
        platform: PlatformConfig) -> None:
    """The current version chose the clicks of a closed-loop night: a 25% drop beyond noise (what
    that feedback costs a clean candidate) passes under max_recall_drop_served; a candidate that loses
    every hit of 4 users in 5 is rejected all the same. Each verdict checked against the delta-method CI."""
    ev = platform.evaluation
    candidate, current = _versions(platform, current=True)
    cand_recall, cur_recall = _pair(600, 0.25, seed=11)
    low, _ = _delta_method(cand_recall, cur_recall, ev.gate_alpha)
    assert ev.max_recall_drop < low < ev.max_recall_drop_served  # beyond noise and the usual bar, below the served one
    _evaluation(platform, {candidate: cand_recall, current: cur_recall}, popularity=0.7,
                unchosen=(12, {candidate: 0.0, current: 0.0}, 0.5))
    row = nightly.gate(platform, MODEL, candidate, DS)
    assert row["passed"] and row["gate_reason"].startswith("drop beyond noise but below max_recall_drop 50.0%")

    broken, _ = _versions(platform, current=False)
    lost = np.where(np.arange(600) % 5 == 0, cur_recall, 0.0)
    assert _delta_method(lost, cur_recall, ev.gate_alpha)[0] > ev.max_recall_drop_served
    _evaluation(platform, {broken: lost, current: cur_recall}, popularity=0.7,
                unchosen=(12, {broken: 0.0, current: 0.0}, 0.5))
    with pytest.raises(nightly.ModelRejected, match="above max_recall_drop 50.0%"):
        nightly.gate(platform, MODEL, broken, DS)


def test_a_first_version_on_a_closed_loop_night_with_few_unchosen_clicks_must_beat_popularity_on_all(
        platform: PlatformConfig) -> None:
    first, _ = _versions(platform, current=False)
    _evaluation(platform, {first: np.full(400, 0.2)}, popularity=0.7, unchosen=(12, {first: 0.5}, 0.0))
    with pytest.raises(nightly.ModelRejected, match="popularity"):
        nightly.gate(platform, MODEL, first, DS)
    row = _gate_table(platform).iloc[-1]
    assert row.baseline_clicks == "all" and row.popularity_recall == 0.7 and row.candidate_baseline_recall == 0.2
