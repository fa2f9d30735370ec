"""The simulator's causal levers (docs/METHODS.md "Simulator levers"): each path works, and its config
field at 0 removes it. Expected values are computed independently, from the contract tables and the
latent ground truth (interests, quality), with the formulas of tasks/simulator/behaviour.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tasks.core.config import SimulatorConfig
from tasks.simulator import ExposureContext, Served, read_ground_truth, register_policy, simulate, simulate_day
from tasks.simulator.behaviour import CLICK_AFFINITY, CLICK_BASE, INTEREST_FLOOR, SAT_MAX
from tasks.simulator.world import DISCOVERY_CAP, INTEREST_SLOTS

START = dt.date(2026, 1, 1)
BASE = SimulatorConfig(users=4_000, items=600, days=3, seed=7, start_date=START)


def _uniform_items(ctx: ExposureContext, cats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform showable item of each category in `cats` (-1 or a category without items: any item)."""
    by_cat = np.argsort(ctx.item_l2, kind="stable")
    count = np.bincount(ctx.item_l2, minlength=ctx.n_categories)
    first = np.cumsum(count) - count
    safe = np.maximum(cats, 0)
    ok = (cats >= 0) & (count[safe] > 0)
    pos = rng.integers(0, len(ctx.item_ids), len(cats))
    pos[ok] = by_cat[first[safe[ok]] + (rng.random(int(ok.sum())) * count[safe[ok]]).astype(np.int64)]
    return ctx.item_ids[pos]


@register_policy("test_one_category_per_session")
def _one_category(
    ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Every slot of a request from one category (drawn per request): repeats = feed position."""
    present = np.unique(ctx.item_l2)
    return _uniform_items(ctx, np.repeat(present[rng.integers(0, len(present), len(slots))], slots), rng)


@register_policy("test_dormant")
def _dormant(ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every slot from one of the user's dormant categories."""
    owner = np.repeat(user_ids - 1, slots)
    dormant = ctx.interest_l2[owner, INTEREST_SLOTS:]
    return _uniform_items(ctx, dormant[np.arange(len(owner)), rng.integers(0, dormant.shape[1], len(owner))], rng)


@register_policy("test_served")
def _served(ctx: ExposureContext, user_ids: np.ndarray, slots: np.ndarray, rng: np.random.Generator) -> Served:
    """Popular-ish items labelled: strategy by feed position parity, channel only for even user ids."""
    n = int(slots.sum())
    position = np.arange(n) - np.repeat(np.cumsum(slots) - slots, slots)
    owner = np.repeat(user_ids, slots)
    return Served(
        item_ids=ctx.item_ids[rng.integers(0, len(ctx.item_ids), n)],
        strategy=np.array([f"pos{p % 2}" for p in position], dtype=object),
        channel=np.where(owner % 2 == 0, "ch_a", None).astype(object),
    )


def _run(tmp: Path, cfg: SimulatorConfig, **kwargs: object) -> Path:
    simulate(cfg, tmp / "landing", tmp / "gt", **kwargs)
    return tmp


def _db(out: Path) -> duckdb.DuckDBPyConnection:
    """Views over the contract tables (events with the day-local row number `row`) and the ground truth."""
    con = duckdb.connect()
    for name in ("users", "items", "follows", "events"):
        con.sql(
            f"create view {name} as select * from read_parquet('{out}/landing/*/{name}.parquet', "
            "hive_partitioning = true, hive_types = {'dt': DATE})"
        )
    con.sql("create view ev as select *, event_id & ((1::bigint << 40) - 1) as row from events")
    for name in ("users", "items", "user_days"):
        con.register(f"truth_{name}", read_ground_truth(out / "gt", name))
    con.sql(
        "create view interest as select user_id, unnest(interest_l2) as l2, unnest(interest_weight) as w "
        "from truth_users"
    )
    return con


def _impressions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every impression with its click (the next row), category, earlier impressions of its category
    in its session (`repeats`) and latent affinity without discovered interests."""
    return con.sql(
        f"""
        select e.dt, e.user_id, e.session_id, e.position, c.event_id is not null as clicked,
               i.category_l2, (count(*) over (partition by e.session_id, i.category_l2 order by e.row) - 1) as repeats,
               ({INTEREST_FLOOR} + coalesce(n.w, 0)) * (0.5 + q.quality) as affinity
        from ev e
        join items i using (item_id)
        join truth_items q using (item_id)
        left join interest n on n.user_id = e.user_id and n.l2 = i.category_l2
        left join ev c on c.dt = e.dt and c.row = e.row + 1 and c.event_type = 'click'
        where e.event_type = 'impression'
        """
    ).df()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Category fatigue ----------------------------------------------------------------------------


@pytest.mark.parametrize("fatigue", [0.6, 0.0])
def test_fatigue_lowers_clicks_on_repeated_categories(tmp_path: Path, fatigue: float) -> None:
    # One day: no follows yet and no discovered interest, so P(click) = sigmoid(base + a * affinity - f * repeats).
    cfg = BASE.model_copy(update={"exposure_policy": "test_one_category_per_session", "fatigue_effect": fatigue})
    imp = _impressions(_db(_run(tmp_path, cfg, users=12_000, days=1)))
    imp["p"] = _sigmoid(CLICK_BASE + CLICK_AFFINITY * imp.affinity - fatigue * imp.repeats)
    imp["p0"] = _sigmoid(CLICK_BASE + CLICK_AFFINITY * imp.affinity)
    by = imp.assign(k=imp.repeats.clip(upper=4)).groupby("k")
    observed, expected = by.clicked.sum(), by.p.sum()
    sd = np.sqrt(by.p.apply(lambda p: (p * (1 - p)).sum()))
    assert (by.size() > 500).all()
    assert ((observed - expected).abs() < 4 * sd + 5).all(), pd.DataFrame({"obs": observed, "exp": expected})
    ratio = observed / by.p0.sum()  # observed / expected without fatigue
    if fatigue:
        assert ratio[4] < 0.6 * ratio[0]
    else:
        assert (ratio - 1).abs().max() < 0.1  # click probability independent of repeats


# Discovery of dormant interests --------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.2, 0.0])
def test_clicks_on_dormant_categories_grow_those_interests(tmp_path: Path, rate: float) -> None:
    cfg = BASE.model_copy(update={"exposure_policy": "test_dormant", "discovery_rate": rate, "days": 4})
    out = _run(tmp_path, cfg)
    con = _db(out)
    # Clicks per user and dormant category, from the events and the latent dormant categories.
    clicks = con.sql(
        """
        with dormant as (select user_id, unnest(dormant_l2) as l2, generate_subscripts(dormant_l2, 1) as slot
                         from truth_users)
        select d.user_id, d.slot, count(e.event_id) as n
        from dormant d
        left join (select e.*, i.category_l2 from events e join items i using (item_id)
                   where e.event_type = 'click') e on e.user_id = d.user_id and e.category_l2 = d.l2
        group by all
        """
    ).df()
    last = START + dt.timedelta(days=cfg.days - 1)
    with np.load(out / "gt" / "_state" / f"dt={last}.npz") as npz:
        dormant_l2 = npz["users.interest_l2"][:, INTEREST_SLOTS:]
        dormant_w = npz["users.interest_w"][:, INTEREST_SLOTS:]
    # The truth's dormant list skips slots without a category (-1): map list positions to slots.
    slot_of = np.cumsum(dormant_l2 >= 0, axis=1) - 1
    u, s = np.nonzero(dormant_l2 >= 0)
    weights = pd.DataFrame({"user_id": u + 1, "slot": slot_of[u, s] + 1, "w": dormant_w[u, s]})
    got = weights.merge(clicks, on=["user_id", "slot"], how="left").fillna({"n": 0})
    assert got.n.sum() > 1_000
    np.testing.assert_allclose(got.w, np.minimum(rate * got.n, DISCOVERY_CAP), atol=1e-6)

    # The truth's discovered count of the last day, for its active users.
    days = con.sql(f"select user_id, discovered_interests from truth_user_days where dt = '{last}'").df()
    n_found = got.assign(found=got.n > 0).groupby("user_id").found.sum().rename("found")
    days = days.join(n_found, on="user_id")
    if rate:
        assert (days.discovered_interests == days.found).all() and days.found.mean() > 0.5
    else:
        assert (days.discovered_interests == 0).all() and (dormant_w == 0).all()


def test_discovered_interests_pay_later(tmp_path: Path) -> None:
    """Under the same dormant-only feed, the last day's click rate is higher with discovery than without."""
    ctr = {}
    for rate in (0.2, 0.0):
        cfg = BASE.model_copy(update={"exposure_policy": "test_dormant", "discovery_rate": rate, "days": 4})
        con = _db(_run(tmp_path / str(rate), cfg))
        ctr[rate] = con.sql(
            "select avg((event_type = 'click')::int) / avg((event_type = 'impression')::int) from events "
            "where dt = (select max(dt) from events) and event_type in ('click', 'impression')"
        ).fetchall()[0][0]
    assert ctr[0.2] > 1.2 * ctr[0.0]


# Creators' publishing rate -------------------------------------------------------------------


@pytest.mark.parametrize("effects", [(0.5, 0.4), (0.0, 0.0)])
def test_new_fans_and_comments_raise_the_publishing_rate(tmp_path: Path, effects: tuple[float, float]) -> None:
    fan, comment = effects
    cfg = BASE.model_copy(
        update={"fan_publish_effect": fan, "comment_publish_effect": comment, "days": 10, "kol_share": 0.05}
    )
    con = _db(_run(tmp_path, cfg, users=3_000))
    got = con.sql(
        """
        with fans as (select author_id as user_id, dt, count(*) as n from follows where action = 'follow' group by all),
             comments as (select i.author_id as user_id, e.dt, count(*) as n
                          from events e join items i using (item_id) where e.event_type = 'comment' group by all)
        select d.user_id, d.dt, d.publish_rate, u.productivity,
               (select coalesce(sum(n), 0) from fans f
                where f.user_id = d.user_id and f.dt between d.dt - 7 and d.dt - 1) as fans,
               (select coalesce(sum(n), 0) from comments c
                where c.user_id = d.user_id and c.dt between d.dt - 7 and d.dt - 1) as comments
        from truth_user_days d join truth_users u using (user_id)
        where u.is_creator
        """
    ).df()
    expected = got.productivity * np.exp(fan * np.log1p(got.fans) + comment * np.log1p(got.comments))
    np.testing.assert_allclose(got.publish_rate, expected, rtol=1e-5)
    assert (got.fans > 0).sum() > 20 and (got.comments > 0).sum() > 20
    if fan:
        assert (got.publish_rate > 1.3 * got.productivity).sum() > 20
    else:
        assert (got.publish_rate == got.productivity).all()


# Offsite signups -----------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.4, 0.0])
def test_a_share_of_offsite_visits_brings_signups(tmp_path: Path, share: float) -> None:
    cfg = BASE.model_copy(update={"offsite_signup_share": share, "kol_share": 0.05})
    con = _db(_run(tmp_path, cfg))
    visits, joined = con.sql(
        """
        select count(*), count(*) filter (where u.signup_ts::date = e.dt and u.signup_ts <= e.ts)
        from events e join users u using (user_id) where e.event_type = 'offsite_visit'
        """
    ).fetchall()[0]
    assert visits > 500
    assert abs(joined - share * visits) < 4 * np.sqrt(visits * share * (1 - share)) + 1
    # Every visitor, lapsed or signing up, is active that day (in the day's truth).
    missing = con.sql(
        "select count(*) from events e anti join truth_user_days d on d.user_id = e.user_id and d.dt = e.dt "
        "where e.event_type = 'offsite_visit'"
    ).fetchall()[0][0]
    assert missing == 0


# Satisfaction parts, return logit parts, new users -------------------------------------------


@pytest.mark.parametrize("on", [True, False])
def test_truth_parts_match_the_contract_tables(tmp_path: Path, on: bool) -> None:
    levers = {
        "new_user_satisfaction_boost": 1.0 if on else 0.0,
        "new_user_low_quality_penalty": 2.0 if on else 0.0,
        "fatigue_effect": 0.3 if on else 0.0,
        "variety_effect": 0.25 if on else 0.0,
        "new_users_per_day": 0.05,
    }
    cfg = BASE.model_copy(update=levers)
    con = _db(_run(tmp_path, cfg))
    seen = con.sql(
        f"""
        with imp as (select e.dt, e.user_id, e.session_id, e.row, i.category_l2, e.item_id
                     from ev e join items i using (item_id) where e.event_type in ('impression', 'offsite_visit')),
             marked as (select *, count(*) over (partition by session_id, category_l2 order by row) > 1 as repeat
                        from imp)
        select m.dt, m.user_id, count(*) as n_seen,
               count(*) filter (where repeat and e.event_type = 'impression') as n_repeat,
               count(*) filter (where q.quality < {cfg.low_quality_threshold}) as n_low
        from marked m join ev e on e.dt = m.dt and e.row = m.row join truth_items q on q.item_id = m.item_id
        group by all
        """
    ).df()
    variety = con.sql(
        """
        select e.dt, e.user_id, count(distinct i.category_l1) as n_l1 from events e join items i using (item_id)
        where e.event_type in ('click', 'offsite_visit') group by all
        """
    ).df()
    following = con.sql(
        """
        with days as (select distinct dt from truth_user_days)
        select d.dt, f.user_id, sum(case when f.action = 'follow' then 1 else -1 end) as n_following
        from days d join follows f on f.dt <= d.dt group by all
        """
    ).df()
    users = con.sql("select user_id, signup_ts::date as signup from users").df()
    t = (
        con.sql("select * from truth_user_days")
        .df()
        .merge(seen, on=["dt", "user_id"], how="left")
        .merge(variety, on=["dt", "user_id"], how="left")
        .merge(following, on=["dt", "user_id"], how="left")
        .merge(users, on="user_id")
        .fillna({"n_seen": 0, "n_repeat": 0, "n_low": 0, "n_l1": 0, "n_following": 0})
    )
    is_new = (pd.to_datetime(t.dt) - pd.to_datetime(t.signup)).dt.days < cfg.new_user_days
    assert is_new.sum() > 100 and (t.n_seen > 0).all()
    close = {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(t.sat_fatigue, -cfg.fatigue_effect * t.n_repeat / t.n_seen, **close)
    np.testing.assert_allclose(t.sat_variety, cfg.variety_effect * t.n_l1, **close)
    penalty = cfg.new_user_low_quality_penalty * is_new * t.n_low / t.n_seen
    np.testing.assert_allclose(t.sat_low_quality, -penalty, **close)
    parts = t[[c for c in t if c.startswith("sat_")]].sum(axis=1)
    np.testing.assert_allclose(t.satisfaction, np.minimum(1 - np.exp(-parts.clip(lower=0)), SAT_MAX), **close)
    assert (t.satisfaction_shift == 0).all() and (t.logit_planted == 0).all()

    np.testing.assert_allclose(t.logit_habit, cfg.habit_effect)
    np.testing.assert_allclose(t.logit_satisfaction, cfg.satisfaction_effect * (t.satisfaction - 0.5), **close)
    boost = cfg.new_user_satisfaction_boost * is_new
    np.testing.assert_allclose(t.logit_new_user, boost * t.logit_satisfaction, **close)
    np.testing.assert_allclose(t.logit_follow, cfg.follow_effect * np.log1p(t.n_following), **close)
    logit = t[[c for c in t if c.startswith("logit_")]].sum(axis=1)
    np.testing.assert_allclose(t.p_return_next_day, _sigmoid(logit), **close)
    if on:
        assert (t.sat_fatigue < 0).sum() > 100 and (t.sat_low_quality < 0).sum() > 50
    else:
        assert (t.sat_fatigue == 0).all() and (t.sat_low_quality == 0).all() and (t.logit_new_user == 0).all()


def test_new_users_low_quality_feed_lowers_their_return(tmp_path: Path) -> None:
    """The same day-1 feed, penalty on vs off: only new users' satisfaction and next-day return drop."""
    truth = {}
    for penalty in (3.0, 0.0):
        cfg = BASE.model_copy(update={"new_user_low_quality_penalty": penalty, "new_users_per_day": 0.05})
        out = _run(tmp_path / str(penalty), cfg, days=1)
        truth[penalty] = read_ground_truth(out / "gt", "user_days").set_index("user_id")
    on, off = truth[3.0], truth[0.0]
    hit = on.sat_low_quality < 0
    assert hit.sum() > 50
    assert (on.satisfaction[~hit] == off.satisfaction[~hit]).all()
    assert (on.p_return_next_day[hit] <= off.p_return_next_day[hit]).all()  # equal where raw satisfaction is <= 0
    assert (on.p_return_next_day[hit] < off.p_return_next_day[hit]).mean() > 0.7


# The planted satisfaction shift --------------------------------------------------------------


def _shift_even_users(user_ids: np.ndarray, day: dt.date) -> np.ndarray:
    return np.where(user_ids % 2 == 0, 0.3, 0.0)


def test_satisfaction_shift_moves_exactly_the_given_users(tmp_path: Path) -> None:
    cfg = BASE.model_copy(update={"days": 2})
    plain = _run(tmp_path / "plain", cfg)
    shifted = _run(tmp_path / "shifted", cfg, satisfaction_shift=_shift_even_users)
    day1 = "dt=2026-01-01/events.parquet"
    assert (plain / "landing" / day1).read_bytes() == (shifted / "landing" / day1).read_bytes()
    a, b = (read_ground_truth(p / "gt", "user_days") for p in (plain, shifted))
    a, b = (x[x.dt == START].set_index("user_id") for x in (a, b))
    even = a.index % 2 == 0
    np.testing.assert_allclose(b.satisfaction[even], np.minimum(a.satisfaction[even] + 0.3, SAT_MAX), atol=1e-6)
    assert (b.satisfaction[~even] == a.satisfaction[~even]).all() and (b.satisfaction_shift[~even] == 0).all()
    np.testing.assert_allclose(b.satisfaction_shift, b.satisfaction - a.satisfaction, atol=1e-6)
    scale = cfg.satisfaction_effect * (1 + cfg.new_user_satisfaction_boost * (b.logit_new_user != 0))
    np.testing.assert_allclose(b.logit_planted, scale * b.satisfaction_shift, rtol=1e-4, atol=1e-6)
    assert (b.p_return_next_day[even] > a.p_return_next_day[even]).mean() > 0.9
    day2 = "dt=2026-01-02/events.parquet"
    assert (plain / "landing" / day2).read_bytes() != (shifted / "landing" / day2).read_bytes()


def test_satisfaction_shift_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="satisfaction_shift returned shape"):
        _run(tmp_path, BASE.model_copy(update={"days": 1}), satisfaction_shift=lambda ids, day: np.zeros(3))


def test_daily_mode_matches_one_go_with_a_shift(tmp_path: Path) -> None:
    cfg = BASE.model_copy(update={"users": 1_500, "items": 300})
    _run(tmp_path / "once", cfg, satisfaction_shift=_shift_even_users)
    for i in range(cfg.days):
        day = START + dt.timedelta(days=i)
        simulate_day(cfg, tmp_path / "daily" / "landing", tmp_path / "daily" / "gt", day, _shift_even_users)

    def digests(root: Path) -> dict[str, str]:
        files = (p for p in sorted(root.rglob("*")) if p.is_file() and "_state" not in p.parts)
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digests(tmp_path / "daily") == digests(tmp_path / "once")


# Served: strategy and channel in the events --------------------------------------------------


def test_served_labels_reach_impressions_and_their_clicks_and_actions(tmp_path: Path) -> None:
    con = _db(_run(tmp_path, BASE.model_copy(update={"exposure_policy": "test_served", "days": 2})))
    rows = con.sql(
        """
        select e.event_type, e.strategy, e.channel, e.user_id, e.position,
               last_value(case when e.event_type = 'impression' then e.strategy end ignore nulls)
                   over w as imp_strategy,
               last_value(case when e.event_type = 'impression' then e.channel end ignore nulls)
                   over w as imp_channel
        from ev e
        window w as (partition by e.session_id order by e.row rows between unbounded preceding and current row)
        """
    ).df()
    imp = rows[rows.event_type == "impression"]
    assert (imp.strategy == "pos" + (imp.position % 2).astype(str)).all()
    assert (imp.channel[imp.user_id % 2 == 0] == "ch_a").all() and imp.channel[imp.user_id % 2 == 1].isna().all()
    after = rows[rows.event_type.isin(["click", "like", "favorite", "share", "comment", "follow"])]
    assert len(after) > 1_000
    assert (after.strategy == after.imp_strategy).all()
    assert (after.channel.fillna("-") == after.imp_channel.fillna("-")).all()
    other = rows[rows.event_type.isin(["session_start", "session_end", "publish", "offsite_visit"])]
    assert other.strategy.isna().all() and other.channel.isna().all()


def test_a_plain_policy_leaves_strategy_and_channel_null(tmp_path: Path) -> None:
    con = _db(_run(tmp_path, BASE.model_copy(update={"days": 1})))
    assert con.sql("select count(strategy) + count(channel) from events").fetchall()[0][0] == 0
