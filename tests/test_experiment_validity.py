"""The statistical validity of the experiment readout (docs/METHODS.md "Readout validity") on one
small organic simulation holding 45 A/A experiments (one per layer) and a planted satisfaction
shift in a layer of its own, read by the dbt marts: the DAU and LT7 readout against a pandas
recomputation from the lake, A/A coverage of 0, CUPED, and the planted effect against its ground
truth recomputed from the simulator's latent return probabilities."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.core.config import PlatformConfig, load_config
from tasks.experiments.validity import (
    AA_PREFIX,
    PLANTED,
    aa_coverage,
    coverage_summary,
    planted_check,
    simulate_readout,
    true_dau_lift,
    validity_config,
)
from tests.conftest import write_config

pytestmark = pytest.mark.slow
EXPERIMENTS, USERS, ITEMS, DAYS, SEED = 45, 2_000, 1_000, 10, 11
SHIFT = 0.3  # the planted satisfaction shift of the PLANTED experiment's treatment arm
PRE_DAYS = 14  # the marts' CUPED pre-period
Z = stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlatformConfig, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("validity")
    base = load_config(write_config(tmp / "recpipe.yaml", tmp / "data"))
    cfg = validity_config(base, EXPERIMENTS, seed=SEED, users=USERS, items=ITEMS, days=DAYS, planted=SHIFT,
                          folder=tmp / "run")
    return cfg, simulate_readout(cfg)


@pytest.fixture(scope="module")
def lake(run: tuple[PlatformConfig, pd.DataFrame]) -> pd.DataFrame:
    """DAU (with CUPED) and LT7 of every experiment recomputed from the lake's events and the
    published assignments: per user the active days of the served window, the LT7 sums over its
    active days whose 7-day window has landed, the pre-period active days; Welch / delta-method CIs."""
    cfg = run[0]
    start = cfg.simulator.start_date + dt.timedelta(days=PRE_DAYS)
    last = cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.days - 1)
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        days = con.sql("select distinct user_id, cast(dt as date) as day from raw.events").df()
        units = con.sql("select experiment, user_id, arm, is_control from experiment_assignments").df()
    days["day"] = pd.to_datetime(days.day).dt.date
    active = set(zip(days.user_id, days.day))
    window = days[days.day >= start].copy()
    window["lt7"] = [sum((u, d + dt.timedelta(days=k)) in active for k in range(7))
                     for u, d in zip(window.user_id, window.day)]
    window["lt7_ok"] = [d + dt.timedelta(days=6) <= last for d in window.day]
    window["lt7_num"] = window.lt7.where(window.lt7_ok, 0)
    per_user = window.groupby("user_id").agg(active=("day", "size"), lt7_sum=("lt7_num", "sum"),
                                             lt7_days=("lt7_ok", "sum"))
    pre = days[(days.day < start) & (days.day >= start - dt.timedelta(days=PRE_DAYS))].groupby("user_id").size()
    users = units.join(per_user, on="user_id").fillna({"active": 0, "lt7_sum": 0, "lt7_days": 0})
    users["y"] = users.active / ((last - start).days + 1)
    users["x"] = users.user_id.map(pre).fillna(0) / PRE_DAYS
    rows = []
    for experiment, e in users.groupby("experiment"):
        arms = {"control": e[e.is_control], "treatment": e[~e.is_control]}
        for metric, num, den in (("dau", "y", None), ("lt7", "lt7_sum", "lt7_days")):
            lin, value = {}, {}
            for arm, g in arms.items():
                d = g[den] if den else pd.Series(1.0, index=g.index)
                value[arm] = g[num].sum() / d.sum()
                lin[arm] = (g[num] - value[arm] * d) / d.mean()
            diff = value["treatment"] - value["control"]
            se = np.sqrt(sum(lin[a].var(ddof=1) / len(lin[a]) for a in arms))
            theta = (sum(((lin[a] - lin[a].mean()) * (arms[a].x - arms[a].x.mean())).sum() for a in arms)
                     / sum(((arms[a].x - arms[a].x.mean()) ** 2).sum() for a in arms))
            cuped = diff - theta * (arms["treatment"].x.mean() - arms["control"].x.mean())
            cuped_se = np.sqrt(sum((lin[a] - theta * arms[a].x).var(ddof=1) / len(lin[a]) for a in arms))
            rows.append({"experiment": experiment, "metric": metric, "diff": diff, "ci_low": diff - Z * se,
                         "ci_high": diff + Z * se, "cuped_diff": cuped, "cuped_ci_low": cuped - Z * cuped_se,
                         "cuped_ci_high": cuped + Z * cuped_se})
    return pd.DataFrame(rows)


def _true_dau(cfg: PlatformConfig) -> pd.Series:
    """Ground-truth DAU per arm of PLANTED from the simulator's latent state, over every user and
    served day: P(active on d) = 1 on the signup day (0 before); else 1 - (1 - p)(1 - q_d), p the
    return probability (p_return_next_day of the user's row of d - 1 if active then; else
    sigmoid(logit_activity + logit_follow) of their last active day; else their base activity),
    q_d the chance that one of the day's offsite visits by existing users (lake events
    `offsite_visit`) lands on them (visitors: uniform over the earlier users but the sharer)."""
    sim = cfg.simulator
    start = sim.start_date + dt.timedelta(days=PRE_DAYS)
    truth = Path(cfg.ground_truth_dir)
    rows = pd.read_parquet(truth / "user_days")
    rows["day"] = pd.to_datetime(rows["dt"].astype(str).str.removeprefix("dt="))
    users = pd.read_parquet(truth / "users")
    users["signup"] = pd.to_datetime(users["dt"].astype(str).str.removeprefix("dt="))
    served = pd.date_range(start, periods=sim.days - PRE_DAYS)
    grid = users[["user_id", "signup", "activity"]].merge(pd.DataFrame({"day": served}), how="cross")
    grid["before"] = grid.day - pd.Timedelta(days=1)
    latest = rows[["user_id", "day", "p_return_next_day", "logit_activity", "logit_follow"]].rename(
        columns={"day": "seen"})
    grid = pd.merge_asof(grid.sort_values("before"), latest.sort_values("seen"), left_on="before",
                         right_on="seen", by="user_id", direction="backward")
    idle = 1 / (1 + np.exp(-(grid.logit_activity.astype(float) + grid.logit_follow.astype(float))))
    p = np.where(grid.seen == grid.before, grid.p_return_next_day, np.where(grid.seen.isna(), grid.activity, idle))
    initial = grid.signup == pd.Timestamp(sim.start_date)
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        events = con.sql("select user_id, dt from raw.events where event_type = 'offsite_visit'").df()
        arms = con.sql(f"select user_id, arm from experiment_assignments where experiment = '{PLANTED}'").df()
    events["day"] = pd.to_datetime(events.dt)
    events = events.merge(users[["user_id", "signup"]], on="user_id")
    earlier = events[(events.signup < events.day) & events.day.isin(served)]
    n_before = {d: (users.signup < d).sum() for d in served}
    q = {d: 1 - (1 - 1 / (n_before[d] - 1)) ** v for d, v in earlier.groupby("day").size().items()}
    p = 1 - (1 - p.astype(float)) * (1 - grid.day.map(q).fillna(0).to_numpy())
    p = np.where(~initial & (grid.signup == grid.day), 1.0, np.where(~initial & (grid.signup > grid.day), 0.0, p))
    grid["p"] = p.astype(float)
    per_user = grid.groupby("user_id").p.mean()
    return arms.assign(p=arms.user_id.map(per_user)).groupby("arm").p.mean()


def test_aa_readout_equals_the_lake_and_covers_zero(run, lake) -> None:
    readout = run[1]
    coverage = aa_coverage(readout)
    assert len(coverage) == 2 * EXPERIMENTS and set(coverage.metric) == {"dau", "lt7"}
    got = coverage.merge(lake, on=["experiment", "metric"], suffixes=("", "_lake"))
    assert len(got) == len(coverage)
    for column in ("diff", "ci_low", "ci_high"):
        np.testing.assert_allclose(got[column], got[f"{column}_lake"], rtol=1e-9, atol=1e-12)
    planted = readout[readout.experiment == PLANTED].merge(lake, on=["experiment", "metric"], suffixes=("", "_lake"))
    np.testing.assert_allclose(planted["diff"], planted["diff_lake"], rtol=1e-9, atol=1e-12)
    aa = lake[lake.experiment.str.startswith(AA_PREFIX)]
    covers = (aa.ci_low <= 0) & (aa.ci_high >= 0)
    share = covers.groupby(aa.metric).mean()
    assert (share >= 0.85).all() and (share <= 1.0).all(), share.to_dict()
    summary = coverage_summary(coverage).set_index("metric")
    assert summary.coverage.to_dict() == pytest.approx(share.to_dict())
    assert (summary.runs == EXPERIMENTS).all()
    for metric, row in summary.iterrows():
        ci = stats.binomtest(round(share[metric] * EXPERIMENTS), EXPERIMENTS).proportion_ci()
        assert (row.coverage_low, row.coverage_high) == pytest.approx((ci.low, ci.high))


def test_cuped_stays_inside_the_plain_ci_and_narrows_dau(run, lake) -> None:
    readout = run[1]
    aa = lake[lake.experiment.str.startswith(AA_PREFIX)]
    dau = aa[aa.metric == "dau"].merge(readout, on=["experiment", "metric"], suffixes=("_lake", ""))
    for column in ("cuped_diff", "cuped_ci_low", "cuped_ci_high"):
        np.testing.assert_allclose(dau[column], dau[f"{column}_lake"], rtol=1e-9, atol=1e-12)
    # The CUPED estimate differs from the plain one by theta (mean x arm - mean x control), whose sd
    # is rho * se (rho = corr(y, x), ~0.6 here): outside the plain CI with P(|N(0,1)| > 1.96 / rho) ~ 0.1%.
    inside = (aa.cuped_diff >= aa.ci_low) & (aa.cuped_diff <= aa.ci_high)
    assert inside.all(), aa[~inside]
    dau_lake = aa[aa.metric == "dau"]
    assert ((dau_lake.cuped_ci_high - dau_lake.cuped_ci_low).mean() < (dau_lake.ci_high - dau_lake.ci_low).mean())
    assert aa_coverage(readout).cuped_inside.all()


def test_planted_effect_is_recovered(run) -> None:
    cfg, readout = run
    truth = _true_dau(cfg)
    true_diff = truth["treatment"] - truth["control"]
    row = readout[(readout.experiment == PLANTED) & (readout.metric == "dau")].iloc[0]
    assert true_diff > 0 and row["diff"] > 0
    assert row.ci_low <= true_diff <= row.ci_high
    assert true_dau_lift(cfg, cfg.experiment(PLANTED)) == pytest.approx({**truth.to_dict(), "diff": true_diff},
                                                                       rel=1e-5)
    check = planted_check(cfg, readout)
    assert check["right_sign"] and check["covers_truth"] and check["true_diff"] == pytest.approx(true_diff, rel=1e-5)
