"""The statistical validity of the experiment readout (docs/METHODS.md "Readout validity").

Layers hash users independently, so one simulation holds many experiments at once, one per layer:
`validity_config` gives a config `n` A/A experiments (two identical arms over all users, each in a
layer of its own) and, optionally, one more layer whose treatment arm has a planted satisfaction
shift (simulator ground truth). The organic simulator serves them (exposure policy `default`, not
the closed loop: the arms differ in nothing the recommendation path would serve). `simulate_readout`
runs the readout's own code path: simulation with the planted shift (tasks.experiments.policy), load
into the lake, warehouse views, assignments, then the dbt experiment marts (`+path:models/experiments`);
nothing of the readout is recomputed here. Then:

- `aa_coverage`: per A/A experiment and metric, whether the 95% CI of the difference (and CUPED's)
  covers zero, whether the CUPED estimate lies inside the plain CI, and both CI widths;
- `true_dau`: the ground-truth DAU of each arm from the simulator's latent return probabilities
  (user_days) and the chance of an offsite visit, over the readout's users and served days;
  `planted_check` compares the planted experiment's readout with its lift, `truth_beside_readout`
  any experiment's DAU readout (`recpipe experiment readout` on simulated data);
- `run_validity`: the heavy command (`recpipe experiment validity`): A/A coverage over many seeds
  and the planted effect against its ground truth, written under <data root>/validity/.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
from scipy import stats

from tasks.core.config import ExperimentConfig, PlatformConfig
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import connect, refresh_views
from tasks.experiments.assignment import NOT_ASSIGNED, arm_index, publish_assignments
from tasks.experiments.policy import ORGANIC, planted_shift
from tasks.experiments.readout import readout_end, readout_rows
from tasks.ingest.load import load_dir
from tasks.simulator import read_ground_truth, simulate
from tasks.simulator.world import sigmoid

CUPED_DAYS = 14  # the marts' default pre-period (dbt var cuped_days): the experiments start after it
AA_PREFIX = "aa_"
PLANTED = "planted"  # the planted-effect experiment (arms control, treatment)
METRICS = ("dau", "lt7")
SELECT = ["--select", "+path:models/experiments"]
DATA_PATHS = ("landing", "lake", "warehouse", "ground_truth", "alerts_log", "reports", "artifacts")


def validity_config(cfg: PlatformConfig, experiments: int, *, seed: int, users: int, items: int, days: int,
                    planted: float | None, folder: Path) -> PlatformConfig:
    """`cfg` with the simulator at (seed, users, items, CUPED_DAYS + `days` days, organic exposure),
    its data under `folder`, and as experiments (the config's own are left out) `experiments` A/A
    ones `aa_00`.. each in its own layer, plus with `planted` the experiment PLANTED whose treatment
    arm's satisfaction is shifted by `planted` on served days; all start after the pre-period. The
    layers' names carry the seed: each seed is a fresh randomisation of the same user ids too."""
    start = cfg.simulator.start_date + dt.timedelta(days=CUPED_DAYS)
    aa = [ExperimentConfig(name=f"{AA_PREFIX}{i:02d}", layer=f"{AA_PREFIX}{i:02d}_s{seed}", start=start,
                           arms={"control": {}, "treatment": {}}) for i in range(experiments)]
    extra = [] if planted is None else [ExperimentConfig(name=PLANTED, layer=f"{PLANTED}_s{seed}", start=start,
                                                         arms={"control": {}, "treatment": {}},
                                                         planted={"treatment": {"satisfaction": planted}})]
    simulator = cfg.simulator.model_copy(update={"seed": seed, "users": users, "items": items,
                                                 "days": CUPED_DAYS + days, "exposure_policy": ORGANIC})
    paths = cfg.paths.model_copy(update={p: str(folder / p) for p in DATA_PATHS})
    return cfg.model_copy(update={"simulator": simulator, "paths": paths, "experiments": (*aa, *extra)})


def simulate_readout(cfg: PlatformConfig) -> pd.DataFrame:
    """Simulate `cfg` from scratch (planted shifts included), load it, publish the assignments and
    build the experiment marts; the readout of every experiment (readout_rows plus `experiment`)."""
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir, satisfaction_shift=planted_shift(cfg))
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    publish_assignments(cfg)
    run_dbt(cfg, ["build", *SELECT])
    with connect(cfg, read_only=True) as con:
        return pd.concat([readout_rows(con, e.name).assign(experiment=e.name) for e in cfg.experiments],
                         ignore_index=True)


def aa_coverage(readout: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Per A/A experiment and metric: diff, CI, whether the CI covers 0 (`covers`), the same for
    CUPED (`cuped_covers`), whether the CUPED estimate lies inside the plain CI (`cuped_inside`),
    and both CI widths."""
    aa = readout[readout.experiment.str.startswith(AA_PREFIX) & readout.metric.isin(metrics)]
    return pd.DataFrame({
        "experiment": aa.experiment, "metric": aa.metric, "diff": aa["diff"], "ci_low": aa.ci_low,
        "ci_high": aa.ci_high, "covers": (aa.ci_low <= 0) & (aa.ci_high >= 0),
        "cuped_diff": aa.cuped_diff, "cuped_covers": (aa.cuped_ci_low <= 0) & (aa.cuped_ci_high >= 0),
        "cuped_inside": (aa.cuped_diff >= aa.ci_low) & (aa.cuped_diff <= aa.ci_high),
        "ci_width": aa.ci_width, "cuped_ci_width": aa.cuped_ci_width,
    }).reset_index(drop=True)


def coverage_summary(coverage: pd.DataFrame) -> pd.DataFrame:
    """Per metric: runs, covered, the coverage share with its 95% Clopper-Pearson interval, and the
    same for CUPED; the share of CUPED estimates inside the plain CI; the mean CI widths."""
    rows = []
    for metric, g in coverage.groupby("metric", sort=False):
        covered, cuped = int(g.covers.sum()), int(g.cuped_covers.sum())
        ci = stats.binomtest(covered, len(g)).proportion_ci(0.95)
        cuped_ci = stats.binomtest(cuped, len(g)).proportion_ci(0.95)
        rows.append({"metric": metric, "runs": len(g), "covered": covered, "coverage": covered / len(g),
                     "coverage_low": ci.low, "coverage_high": ci.high, "cuped_coverage": cuped / len(g),
                     "cuped_coverage_low": cuped_ci.low, "cuped_coverage_high": cuped_ci.high,
                     "cuped_inside_ci": g.cuped_inside.mean(), "mean_ci_width": g.ci_width.mean(),
                     "mean_cuped_ci_width": g.cuped_ci_width.mean()})
    return pd.DataFrame(rows)


def true_dau(cfg: PlatformConfig, experiment: ExperimentConfig, last: dt.date | None = None) -> dict[str, float]:
    """Ground-truth DAU per arm: the mean over the arm's users (all who signed up by `last`, default
    the last simulated day) and the served days experiment.start .. last of P(active on d) from the
    simulator's latent state: 1 on the signup day, 0 before; else 1 - (1 - p)(1 - q_d), with p the
    return probability (p_return_next_day of d - 1 for a user active then; otherwise
    sigmoid(logit_activity + logit_follow) of their last active day, as follows change only on
    active days; or the base activity if never active yet) and q_d = 1 - (1 - 1 / (n_d - 1))^V_d the
    chance of an offsite visit (V_d visits of d by existing users in the lake, each to one of the
    n_d users signed up before d but the sharer, uniformly)."""
    sim = cfg.simulator
    user_days = read_ground_truth(cfg.ground_truth_dir, "user_days")
    truth_users = read_ground_truth(cfg.ground_truth_dir, "users")
    last_day = (max(user_days.dt) if last is None else last) - sim.start_date
    n = int(truth_users.user_id.max())
    signup = np.full(n, -1)  # day index since the start date; -1: the initial base
    joined = truth_users[truth_users.dt > sim.start_date]
    signup[joined.user_id.to_numpy() - 1] = [(d - sim.start_date).days for d in joined.dt]
    idle = np.zeros(n)  # P(active) of a user not active the day before
    idle[truth_users.user_id.to_numpy() - 1] = truth_users.activity.to_numpy(np.float64)
    by_day = {(d - sim.start_date).days: g for d, g in user_days.groupby("dt")}
    first = (experiment.start - sim.start_date).days
    with connect(cfg, read_only=True) as con:
        visits = dict(con.execute(
            "select cast(e.dt as date) - ?, count(*) from raw.events as e inner join raw.users as u using (user_id) "
            "where e.event_type = 'offsite_visit' and cast(u.signup_ts as date) < cast(e.dt as date) group by 1",
            [sim.start_date]).fetchall())
    p_sum = np.zeros(n)
    for day in range(last_day.days + 1):
        p = idle.copy()
        if day - 1 in by_day:
            prev = by_day[day - 1]
            p[prev.user_id.to_numpy() - 1] = prev.p_return_next_day.to_numpy(np.float64)
        existing = int((signup < day).sum())
        q = 1 - (1 - 1 / max(existing - 1, 1)) ** visits.get(day, 0)
        p = 1 - (1 - p) * (1 - q)
        p[signup == day] = 1.0
        p[signup > day] = 0.0
        if day >= first:
            p_sum += p
        if day in by_day:  # the next days' idle probability of today's active users
            today = by_day[day]
            idle[today.user_id.to_numpy() - 1] = sigmoid(today.logit_activity.to_numpy(np.float64)
                                                         + today.logit_follow.to_numpy(np.float64))
    dau = p_sum / (last_day.days + 1 - first)
    arm = np.where(signup <= last_day.days, arm_index(cfg, experiment, np.arange(1, n + 1)), NOT_ASSIGNED)
    return {name: float(dau[arm == i].mean()) for i, name in enumerate(experiment.arms)}


def true_dau_lift(cfg: PlatformConfig, experiment: ExperimentConfig) -> dict[str, float]:
    """`true_dau` per arm over the whole simulation, and second arm - control ("diff")."""
    per_arm = true_dau(cfg, experiment)
    treatment = list(experiment.arms)[1]
    return {**per_arm, "diff": per_arm[treatment] - per_arm[experiment.control]}


def truth_beside_readout(cfg: PlatformConfig, experiment: ExperimentConfig, readout: pd.DataFrame) -> pd.DataFrame:
    """Per arm against the control: the readout's DAU difference and 95% CI next to the ground truth's
    (`true_dau` over the readout's served days), and whether the CI covers it; empty when the
    experiment has no DAU readout or the data has no simulator ground truth."""
    dau, end = readout[readout.metric == "dau"], readout_end(cfg, experiment.name)
    if dau.empty or end is None or not (cfg.ground_truth_dir / "user_days").is_dir():
        return pd.DataFrame()
    truth = true_dau(cfg, experiment, end)
    control, arm = truth[experiment.control], dau.arm.map(truth).to_numpy()
    return pd.DataFrame({
        "arm": dau.arm.to_numpy(),
        "true_control": control,
        "true_arm": arm,
        "true_diff": arm - control,
        "true_lift": arm / control - 1,
        "diff": dau["diff"].to_numpy(),
        "ci_low": dau.ci_low.to_numpy(),
        "ci_high": dau.ci_high.to_numpy(),
    }).assign(covers=lambda t: (t.ci_low <= t.true_diff) & (t.true_diff <= t.ci_high))


def planted_check(cfg: PlatformConfig, readout: pd.DataFrame) -> dict[str, float | bool]:
    """The PLANTED experiment's DAU readout (diff, CI, CUPED) against its ground-truth lift: whether
    the diff has the sign of the planted shift (more satisfaction, more returns) and whether the CIs
    cover the truth."""
    row = readout[(readout.experiment == PLANTED) & (readout.metric == "dau")].iloc[0]
    experiment = cfg.experiment(PLANTED)
    truth = true_dau_lift(cfg, experiment)["diff"]
    shift = experiment.planted["treatment"]["satisfaction"]
    return {"diff": float(row["diff"]), "ci_low": float(row.ci_low), "ci_high": float(row.ci_high),
            "cuped_diff": float(row.cuped_diff), "cuped_ci_low": float(row.cuped_ci_low),
            "cuped_ci_high": float(row.cuped_ci_high), "true_diff": truth,
            "right_sign": bool(np.sign(row["diff"]) == np.sign(shift)),
            "covers_truth": bool(row.ci_low <= truth <= row.ci_high),
            "cuped_covers_truth": bool(row.cuped_ci_low <= truth <= row.cuped_ci_high)}


def validity_dir(cfg: PlatformConfig) -> Path:
    """Where the heavy command writes its results (and each seed's simulation)."""
    return cfg.data_root / "validity"


def run_validity(cfg: PlatformConfig, seeds: int, experiments: int, users: int, items: int, days: int,
                 planted: float, terminal: TextIO) -> dict[str, object]:
    """A/A coverage over `seeds` simulations (seeds simulator.seed, +1, ..), each with `experiments`
    A/A layers and the planted-effect layer; one progress line per seed on `terminal`. Writes
    aa_coverage.csv (per seed, experiment, metric), planted.csv (per seed) and summary.json under
    validity_dir; returns the summary (coverage per metric with its binomial CI, planted recovery)."""
    out = validity_dir(cfg)
    coverage, planted_rows = [], []
    for i in range(seeds):
        seed, t0 = cfg.simulator.seed + i, time.perf_counter()
        folder = out / f"seed={seed}"
        shutil.rmtree(folder, ignore_errors=True)
        scfg = validity_config(cfg, experiments, seed=seed, users=users, items=items, days=days, planted=planted,
                               folder=folder)
        readout = simulate_readout(scfg)
        cov = aa_coverage(readout).assign(seed=seed)
        check = {"seed": seed, **planted_check(scfg, readout)}
        coverage.append(cov)
        planted_rows.append(check)
        shares = ", ".join(f"{m} {g.covers.mean():.0%}" for m, g in cov.groupby("metric", sort=False))
        terminal.write(f"seed {seed} [{i + 1}/{seeds}]: A/A CI covers 0: {shares}; planted DAU diff "
                       f"{check['diff']:+.4f} [{check['ci_low']:+.4f}, {check['ci_high']:+.4f}] vs truth "
                       f"{check['true_diff']:+.4f} ({time.perf_counter() - t0:.0f}s)\n")
    table, planted_table = pd.concat(coverage, ignore_index=True), pd.DataFrame(planted_rows)
    summary = coverage_summary(table)
    recovered = {"runs": len(planted_table), "right_sign": int(planted_table.right_sign.sum()),
                 "covers_truth": int(planted_table.covers_truth.sum()),
                 "cuped_covers_truth": int(planted_table.cuped_covers_truth.sum()),
                 "mean_diff": float(planted_table["diff"].mean()),
                 "mean_true_diff": float(planted_table.true_diff.mean())}
    result = {"seeds": seeds, "experiments": experiments, "users": users, "items": items, "days": days,
              "planted_satisfaction": planted, "coverage": summary.to_dict(orient="records"), "planted": recovered}
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "aa_coverage.csv", index=False)
    planted_table.to_csv(out / "planted.csv", index=False)
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=float))
    terminal.writelines(f"A/A {r.metric}: CI covers 0 in {r.covered}/{r.runs} = {r.coverage:.1%} (95% CI "
                        f"{r.coverage_low:.1%}-{r.coverage_high:.1%}); CUPED {r.cuped_coverage:.1%}; CUPED estimate "
                        f"inside the plain CI {r.cuped_inside_ci:.1%}; mean CI width {r.mean_ci_width:.4f} -> CUPED "
                        f"{r.mean_cuped_ci_width:.4f}\n" for r in summary.itertuples())
    terminal.write(f"planted +{planted} satisfaction: DAU diff right sign in {recovered['right_sign']}/{seeds}, "
                   f"CI covers the ground-truth lift in {recovered['covers_truth']}/{seeds} (CUPED "
                   f"{recovered['cuped_covers_truth']}/{seeds}); mean diff {recovered['mean_diff']:+.4f} vs truth "
                   f"{recovered['mean_true_diff']:+.4f}; results in {out}\n")
    return result
