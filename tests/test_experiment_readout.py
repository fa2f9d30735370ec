"""The experiment readout (docs/METHODS.md "Experiment readout") on a synthetic warehouse with known
assignments: every number against an independent pandas / scipy computation from the raw events,
A/A coverage and CUPED, a planted effect recovered, sample-ratio mismatch flagged and alerted, the
guardrails, empty inputs, and the report section."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.core.config import EXPERIMENT_METRICS, PlatformConfig, load_config
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import connect_writer
from tasks.experiments.readout import READOUT_COLUMNS, check_sample_ratio, readout_table
from tasks.ops.alerts import read_alerts
from tasks.reports.experiments import experiments_section
from tasks.reports.fragments import embedded_specs
from tests.charts import assert_valid_charts
from tests.conftest import write_config

pytestmark = pytest.mark.slow
FIRST = dt.date(2026, 1, 1)
DAYS = 28
START = dt.date(2026, 1, 15)  # 14 pre-period days (the default cuped_days), 14 served days
LAST = FIRST + dt.timedelta(days=DAYS - 1)
CUPED_DAYS = 14
Z = stats.norm.ppf(0.975)
SELECT = ["--select", "+path:models/experiments"]
AA_RUNS = 20
PLANTED_DAU = 0.1  # the "planted" arm's users are active with a probability 0.1 higher on served days


def _population(rng: np.random.Generator, experiment: str, first_user: int, arms: dict[str, int],
                effect: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users first_user.. split over `arms` ({arm: users}, in random order) and their daily activity
    probability: p ~ U(0.05, 0.85) before START; on served days p, or per `effect` {arm: kind}:
    'up' p + PLANTED_DAU; 'ban' 0 for users with p < 0.3 (the low-activity ones), else p; 'mix': 30% of
    the users (both arms) are dormant (p = 0), the arm's dormant ones active with 0.15 on served days
    (one-off visits: DAU up, LT7 down)."""
    n = sum(arms.values())
    users = np.arange(first_user, first_user + n)
    arm = rng.permutation(np.repeat(list(arms), list(arms.values())))
    p = rng.uniform(0.05, 0.85, n)
    dormant = np.zeros(n, bool)
    if "mix" in (effect or {}).values():
        dormant = rng.random(n) < 0.3
        p[dormant] = 0.0
    served = p.copy()
    for name, kind in (effect or {}).items():
        mine = arm == name
        if kind == "up":
            served[mine] = p[mine] + PLANTED_DAU
        elif kind == "ban":
            served[mine & (p < 0.3)] = 0.0
        elif kind == "mix":
            served[mine & dormant] = 0.15
    assignments = pd.DataFrame({"experiment": experiment, "layer": experiment, "user_id": users, "arm": arm,
                                "is_control": arm == next(iter(arms))})
    day_offsets = np.arange(DAYS)
    prob = np.where(day_offsets[None, :] < (START - FIRST).days, p[:, None], served[:, None])
    active = rng.random((n, DAYS)) < prob
    u_idx, d_idx = np.nonzero(active)
    k = len(u_idx)
    user_days = pd.DataFrame({
        "user_id": users[u_idx],
        "day": [FIRST + dt.timedelta(days=int(d)) for d in d_idx],
        "sessions": 1 + (rng.random(k) < 0.3),
        "clicks": rng.poisson(1 + 4 * p[u_idx]),
        "follows": (rng.random(k) < 0.15).astype(int),
        "publishes": (rng.random(k) < 0.1).astype(int),
    })
    user_days["dwell_ms"] = (30_000 + 20_000 * user_days.clicks) * rng.uniform(0.5, 1.5, k)
    user_days["dwell_ms"] = user_days.dwell_ms.round().astype(np.int64)
    return assignments, user_days


def _events(user_days: pd.DataFrame) -> pd.DataFrame:
    """The raw events of the user-days: per session a session_start and a session_end (the day's
    dwell on the first session_end), then the clicks, follows and publishes."""
    parts = []
    for event_type, count in (("session_start", "sessions"), ("session_end", "sessions"), ("click", "clicks"),
                              ("follow", "follows"), ("publish", "publishes")):
        rep = user_days.loc[user_days.index.repeat(user_days[count])].copy()
        rep["event_type"] = event_type
        rep["dwell"] = np.where(rep.index.duplicated(keep="first"), 0, rep.dwell_ms) if event_type == "session_end" \
            else None
        parts.append(rep)
    ev = pd.concat(parts, ignore_index=True)
    n = len(ev)
    day = pd.to_datetime(ev.day)
    return pd.DataFrame({
        "event_id": np.arange(n, dtype=np.int64),
        "ts": day + pd.Timedelta(hours=8) + pd.to_timedelta(np.arange(n) % 3600, unit="s"),
        "dt": day.dt.date,
        "user_id": ev.user_id.astype(np.int64),
        "session_id": (ev.user_id * 100 + (day - pd.Timestamp(FIRST)).dt.days).astype(np.int64),
        "item_id": np.int64(1),
        "event_type": ev.event_type,
        "dwell_ms": pd.array(ev.dwell, dtype="Int64"),
        "experiment_bucket": "control",
        "referrer_user_id": pd.array([None] * n, dtype="Int64"),
        "position": pd.array([None] * n, dtype="Int32"),
    })


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One synthetic warehouse with every experiment: 'exact' (3 arms, 'b' planted), 20 A/A runs,
    'srm_bad' (360 vs 240 users) and 'srm_ok', 'ban' and 'mix' (guardrails), 'future' (no served
    day yet). Built once before the experiment tables exist, then once with them."""
    tmp = tmp_path_factory.mktemp("experiment-readout")
    cfg = load_config(write_config(tmp / "recpipe.yaml", tmp / "data"))
    rng = np.random.default_rng(7)
    specs = [("exact", {"control": 300, "a": 300, "b": 300}, {"b": "up"}),
             *[(f"aa_{i:02d}", {"control": 150, "treatment": 150}, None) for i in range(AA_RUNS)],
             ("srm_bad", {"control": 360, "treatment": 240}, None),
             ("srm_ok", {"control": 300, "treatment": 300}, None),
             ("ban", {"control": 600, "treatment": 600}, {"treatment": "ban"}),
             ("mix", {"control": 600, "treatment": 600}, {"treatment": "mix"})]
    frames, first_user = [], 1
    for name, arms, effect in specs:
        frames.append(_population(rng, name, first_user, arms, effect))
        first_user += sum(arms.values())
    assignments = pd.concat([a for a, _ in frames], ignore_index=True)
    user_days = pd.concat([u for _, u in frames], ignore_index=True)
    users = pd.DataFrame({"user_id": np.arange(1, first_user, dtype=np.int64), "signup_ts": pd.Timestamp("2025-12-01"),
                          "gender": "f", "age_bucket": "18-24", "city_tier": np.int32(1), "country": "xx"})
    events = _events(user_days)
    with connect_writer(cfg) as con:
        con.execute("create schema raw")
        con.register("users_df", users)
        con.register("events_df", events)
        con.execute("create table raw.users as select * from users_df")
        con.execute("create table raw.events as select * from events_df")
    run_dbt(cfg, ["build", *SELECT])
    empty = _tables(cfg)

    experiments = pd.DataFrame(
        [{"experiment": name, "layer": name, "start_day": START, "end_day": None, "traffic": 1.0,
          "control_arm": next(iter(arms)), "arms": ",".join(arms), "metrics": ",".join(EXPERIMENT_METRICS)}
         for name, arms, _ in specs]
        + [{"experiment": "future", "layer": "future", "start_day": dt.date(2026, 3, 1), "end_day": None,
            "traffic": 1.0, "control_arm": "control", "arms": "control,treatment", "metrics": "dau"}])
    with connect_writer(cfg) as con:
        con.register("assignments_df", assignments)
        con.register("experiments_df", experiments)
        con.execute("create table experiment_assignments as select * from assignments_df")
        con.execute("create table experiments as select experiment, layer, cast(start_day as date) as start_day, "
                    "cast(end_day as date) as end_day, traffic, control_arm, arms, metrics from experiments_df")
    run_dbt(cfg, ["build", *SELECT])
    return {"cfg": cfg, "empty": empty, "tables": _tables(cfg), "assignments": assignments, "user_days": user_days}


def _tables(cfg: PlatformConfig) -> dict[str, pd.DataFrame]:
    names = ("experiment_readout", "experiment_weekly", "experiment_srm", "experiment_guardrails")
    with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
        return {t: con.sql(f"select * from {t}").df() for t in names}


def _expected(user_days: pd.DataFrame, assignments: pd.DataFrame, experiment: str, first: dt.date,
              last: dt.date, arms: tuple[str, ...] = ("control", "a", "b")) -> pd.DataFrame:
    """The readout recomputed from the user-days: per user, the metric's numerator, denominator and
    pre-period covariate; per arm R and the delta-method linearisation; CUPED with theta pooled
    within arms; normal CIs and p-values."""
    units = assignments[assignments.experiment == experiment][["user_id", "arm"]].set_index("user_id")
    ud = user_days[user_days.user_id.isin(units.index)]
    active = set(zip(ud.user_id, ud.day))
    window = ud[(ud.day >= first) & (ud.day <= last)].copy()
    pre = ud[(ud.day >= START - dt.timedelta(days=CUPED_DAYS)) & (ud.day < START)]
    window["lt7"] = [sum((u, d + dt.timedelta(days=k)) in active for k in range(7)) for u, d in
                     zip(window.user_id, window.day)]
    window["next"] = [int((u, d + dt.timedelta(days=1)) in active) for u, d in zip(window.user_id, window.day)]
    window["lt7_ok"] = [d + dt.timedelta(days=6) <= LAST for d in window.day]
    window["next_ok"] = [d + dt.timedelta(days=1) <= LAST for d in window.day]
    days = (last - first).days + 1
    g = window.groupby("user_id")
    per_user = pd.DataFrame({
        "active": g.size(), "session_s": g.dwell_ms.sum() / 1000, "clicks": g.clicks.sum(), "follows": g.follows.sum(),
        "publisher_days": g.publishes.apply(lambda s: (s > 0).sum()),
        "lt7_sum": g.apply(lambda f: f.lt7[f.lt7_ok].sum()), "lt7_days": g.lt7_ok.sum(),
        "next_active": g.apply(lambda f: f.next[f.next_ok].sum()), "next_days": g.next_ok.sum(),
    }).reindex(units.index, fill_value=0)
    gp = pre.groupby("user_id")
    pre_user = pd.DataFrame({"active": gp.size(), "session_s": gp.dwell_ms.sum() / 1000, "clicks": gp.clicks.sum(),
                             "follows": gp.follows.sum()}).reindex(units.index, fill_value=0) / CUPED_DAYS
    one = pd.Series(1.0, index=units.index)
    spec = {
        "dau": (per_user.active / days, one, pre_user.active),
        "session_duration_s": (per_user.session_s / days, one, pre_user.session_s),
        "clicks": (per_user.clicks / days, one, pre_user.clicks),
        "follows": (per_user.follows / days, one, pre_user.follows),
        "penetration_rate": (per_user.publisher_days, per_user.active, pre_user.active),
        "next_day_retention": (per_user.next_active, per_user.next_days, pre_user.active),
        "lt7": (per_user.lt7_sum, per_user.lt7_days, pre_user.active),
    }
    control = arms[0]
    rows = []
    for metric, (num, den, x) in spec.items():
        lin, value = {}, {}
        for arm in arms:
            mine = units.arm == arm
            value[arm] = num[mine].sum() / den[mine].sum()
            lin[arm] = (num[mine] - value[arm] * den[mine]) / den[mine].mean()
        xs = {arm: x[units.arm == arm] for arm in arms}
        theta = (sum(((lin[a] - lin[a].mean()) * (xs[a] - xs[a].mean())).sum() for a in arms)
                 / sum(((xs[a] - xs[a].mean()) ** 2).sum() for a in arms))
        for arm in arms[1:]:
            diff = value[arm] - value[control]
            se = np.sqrt(lin[arm].var(ddof=1) / len(lin[arm]) + lin[control].var(ddof=1) / len(lin[control]))
            cuped = diff - theta * (xs[arm].mean() - xs[control].mean())
            cuped_se = np.sqrt(sum((lin[a] - theta * xs[a]).var(ddof=1) / len(lin[a]) for a in (arm, control)))
            rows.append({
                "metric": metric, "arm": arm, "control_value": value[control], "arm_value": value[arm], "diff": diff,
                "rel_lift": diff / value[control], "ci_low": diff - Z * se, "ci_high": diff + Z * se,
                "p_value": 2 * stats.norm.sf(abs(diff / se)), "cuped_diff": cuped,
                "cuped_ci_low": cuped - Z * cuped_se, "cuped_ci_high": cuped + Z * cuped_se,
                "cuped_p_value": 2 * stats.norm.sf(abs(cuped / cuped_se)),
                "n_control": len(lin[control]), "n_arm": len(lin[arm]),
            })
    return pd.DataFrame(rows)


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values(["metric", "arm"]).reset_index(drop=True)
    want = want.sort_values(["metric", "arm"]).reset_index(drop=True)
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False, rtol=1e-9, atol=1e-12)


def test_empty_experiment_tables_build_empty(world) -> None:
    assert all(t.empty for t in world["empty"].values())
    assert "future" not in set(world["tables"]["experiment_readout"].experiment)
    assert "future" not in set(world["tables"]["experiment_srm"].experiment)


def test_readout_equals_an_independent_computation(world) -> None:
    readout, weekly = world["tables"]["experiment_readout"], world["tables"]["experiment_weekly"]
    got = readout[readout.experiment == "exact"]
    assert set(got.metric) == set(EXPERIMENT_METRICS) and set(got.arm) == {"a", "b"}
    _compare(got, _expected(world["user_days"], world["assignments"], "exact", START, LAST))
    assert np.allclose(got.ci_width, got.ci_high - got.ci_low) and np.allclose(got.cuped_ci_width,
                                                                              got.cuped_ci_high - got.cuped_ci_low)
    assert (got.served_days == 14).all()
    for week, first in ((1, START), (2, START + dt.timedelta(days=7))):
        rows = weekly[(weekly.experiment == "exact") & (weekly.week == week)]
        want = _expected(world["user_days"], world["assignments"], "exact", first, first + dt.timedelta(days=6))
        _compare(rows, want)  # week 2: LT7 over its first day only (the one window that has landed)


def test_readout_table_for_the_cli_and_the_report(world) -> None:
    table = readout_table(world["cfg"], "exact")
    assert list(table.columns) == READOUT_COLUMNS
    assert list(dict.fromkeys(table.metric)) == list(EXPERIMENT_METRICS) and len(table) == 2 * len(EXPERIMENT_METRICS)
    assert readout_table(world["cfg"], "future").empty


def test_aa_coverage_and_cuped(world) -> None:
    readout = world["tables"]["experiment_readout"]
    dau = readout[readout.experiment.str.startswith("aa_") & (readout.metric == "dau")]
    assert len(dau) == AA_RUNS
    covered = ((dau.ci_low <= 0) & (dau.ci_high >= 0)).sum()
    assert covered >= 16, f"the DAU CI covers 0 in {covered}/{AA_RUNS} A/A runs"
    assert ((dau.cuped_ci_low <= 0) & (dau.cuped_ci_high >= 0)).sum() >= 16
    assert (dau.cuped_ci_width < dau.ci_width).all()
    # CUPED moves the estimate by theta (mean_x arm - mean_x control), whose sd is about rho * se (rho
    # = corr(y, x), ~0.8 here): outside the plain CI with probability P(|N(0, 1)| > 1.96 / rho), ~1.4%,
    # so "never" cannot hold over 20 runs; 18 of 20 allows one or two (P(>= 3) ~ 0.3%; here 1).
    inside = (dau.cuped_diff >= dau.ci_low) & (dau.cuped_diff <= dau.ci_high)
    assert inside.sum() >= 18


def test_a_planted_effect_is_recovered(world) -> None:
    readout = world["tables"]["experiment_readout"]
    dau = readout[(readout.experiment == "exact") & (readout.metric == "dau")].set_index("arm")
    b = dau.loc["b"]
    assert b["diff"] > 0 and b.ci_low <= PLANTED_DAU <= b.ci_high and b.ci_low > 0
    assert b.cuped_ci_low <= PLANTED_DAU <= b.cuped_ci_high and b.cuped_ci_width < b.ci_width
    a = dau.loc["a"]
    assert a.ci_low <= 0 <= a.ci_high


def test_sample_ratio_mismatch_is_flagged_and_alerted(world) -> None:
    cfg, srm = world["cfg"], world["tables"]["experiment_srm"]
    flagged = set(srm[srm.is_mismatch].experiment)
    # ban and mix change who is active at all (their LT7 compares different populations): flagged too
    assert flagged == {"srm_bad"}  # arms that change who comes back ('ban', 'mix') are no mismatch
    assert set(srm[srm.assigned_p_value < 0.001].experiment) == {"srm_bad"}
    for name in ("srm_bad", "srm_ok", "exact", "ban"):
        rows = srm[srm.experiment == name].sort_values("arm")
        chi2, p = stats.chisquare(rows.active_users)
        assert rows.chi_square.iloc[0] == pytest.approx(chi2, rel=1e-9)
        assert rows.p_value.iloc[0] == pytest.approx(p, rel=1e-9, abs=1e-12)
        assert rows.assigned_p_value.iloc[0] == pytest.approx(stats.chisquare(rows.assigned_users).pvalue,
                                                              rel=1e-9, abs=1e-12)
        ud, asg = world["user_days"], world["assignments"]
        served = ud[ud.day >= START].user_id.unique()
        active = asg[(asg.experiment == name) & asg.user_id.isin(served)].groupby("arm").size()
        assert dict(zip(rows.arm, rows.active_users)) == active.to_dict()
    before = len(read_alerts(cfg))
    summaries = check_sample_ratio(cfg)
    alerts = read_alerts(cfg)[before:]
    assert [a["details"]["experiment"] for a in alerts] == ["srm_bad"]  # one alert
    assert alerts[0]["kind"] == "data_quality" and alerts[0]["severity"] == "warning"
    assert {s["experiment"]: s["is_mismatch"] for s in summaries}["srm_ok"] is False


def test_guardrails(world) -> None:
    g = world["tables"]["experiment_guardrails"].set_index(["experiment", "arm"])
    assert g.loc[("ban", "treatment"), "lt_up_from_fewer_low_activity"]
    assert g.loc[("ban", "treatment"), "fewer_low_activity_active"]
    assert g.loc[("mix", "treatment"), "dau_up_lt7_down"]
    assert not g.loc[("mix", "treatment"), "lt_up_from_fewer_low_activity"]
    assert not g.loc[("exact", "b"), "dau_up_lt7_down"] and not g.loc[("exact", "b"), "lt_up_from_fewer_low_activity"]


def test_report_section(world, tmp_path) -> None:
    html = experiments_section(world["cfg"])
    assert 'id="experiments"' in html and "exact" in html and assert_valid_charts(html)
    exact = readout_table(world["cfg"], "exact")
    forest = embedded_specs(html[html.index("<h3>exact"):])[0]  # the forest plot: plain and CUPED per metric x arm
    plain = {(v["panel"], v["row"], f): v[f] for v in forest["data"]["values"] if v["estimator"] == "plain"
             for f in ("estimate", "low", "high")}
    expected = {(r.metric, r.arm, f): getattr(r, c) for r in exact.itertuples()
                for f, c in (("estimate", "diff"), ("low", "ci_low"), ("high", "ci_high"))}
    assert plain == pytest.approx({k: (float("nan") if v is None else v) for k, v in expected.items()}, nan_ok=True)
    assert "sample-ratio mismatch" in html.lower() and "srm_bad" in html
    missing = load_config(write_config(tmp_path / "recpipe.yaml", tmp_path / "data"))
    assert "not built yet" in experiments_section(missing)
