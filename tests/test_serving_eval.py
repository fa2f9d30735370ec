"""The offline funnel evaluation on a copy of the served world (the nightly feeds and the
evaluation written into it): the feed's and popularity's Recall/NDCG against an independent
computation from the lake's events and the feeds, the merged set against every channel, every
value's CI over users and min_users flag, ties at the top-K cut, the table's history and re-run,
and the report section."""

from __future__ import annotations

import datetime as dt
import math
import shutil
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml

from tasks.core.config import PlatformConfig, load_config
from tasks.core.warehouse import connect, refresh_views
from tasks.reports.fragments import embedded_specs
from tasks.reports.serving import serving_section
from tasks.serving import batch
from tasks.serving.context import load_context
from tasks.serving.evaluate import RESULT_COLUMNS, TABLE, evaluate_funnel, ranked_lists, write_results
from tasks.serving.funnel import recommend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(served_world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlatformConfig, dt.date]]:
    """A copy of the served world (its data and artifacts), with the nightly feeds for day + 1."""
    source, day = served_world
    tmp = tmp_path_factory.mktemp("funnel-eval")
    shutil.copytree(source.data_root, tmp / "data")
    raw = source.model_dump(mode="json")
    raw["paths"]["data_root"] = str(tmp / "data")
    path = tmp / "recpipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECPIPE_CONFIG", str(path))
        refresh_views(cfg)  # the copied warehouse's views still read the source's lake
        batch.run(cfg, day)
        yield cfg, day


@pytest.fixture(scope="module")
def results(world) -> pd.DataFrame:
    cfg, day = world
    out = evaluate_funnel(cfg, day)
    write_results(cfg, out)
    return out


def _value(results: pd.DataFrame, what: str, metric: str, k: int, segment: str = "all") -> pd.Series:
    row = results[(results.what == what) & (results.metric == metric) & (results.k == k) & (results.segment == segment)]
    assert len(row) == 1, (what, metric, k, segment)
    return row.iloc[0]


def _lake(cfg: PlatformConfig, table: str, columns: list[str]) -> pd.DataFrame:
    dataset = pads.dataset(cfg.lake_dir / table, format="parquet", partitioning="hive")
    return dataset.to_table(columns=columns).to_pandas()


def _recall_ndcg(lists: pd.DataFrame, truth: pd.DataFrame) -> tuple[float, float, int]:
    """Mean over truth's users of hits / |truth| and DCG / ideal DCG (binary gains, 1 / log2(rank + 2),
    rank from 0); `lists`: user_id, rank, item_id."""
    hits = lists.merge(truth, on=["user_id", "item_id"])
    hits["gain"] = 1.0 / np.log2(hits["rank"] + 2)
    k = int(lists["rank"].max()) + 1
    per_user = truth.groupby("user_id").item_id.nunique().rename("n").to_frame()
    per_user["hits"] = hits.groupby("user_id").size().reindex(per_user.index, fill_value=0)
    per_user["dcg"] = hits.groupby("user_id").gain.sum().reindex(per_user.index, fill_value=0.0)
    per_user["ideal"] = [sum(1.0 / math.log2(r + 2) for r in range(min(n, k))) for n in per_user.n]
    return float((per_user.hits / per_user.n).mean()), float((per_user.dcg / per_user.ideal).mean()), len(per_user)


def test_feed_and_popularity_match_an_independent_computation(world, results: pd.DataFrame, record_property) -> None:
    """Truth: the distinct catalogue items each user clicked on day + 1. Feed: the served path run
    again for those users. Popularity: the window's most clicked items (ties: lower id), the user's
    own clicked items left out. Both for everyone and for the users with / without history."""
    cfg, day = world
    k = cfg.serving.strategy(cfg.serving.default_strategy).feed_length
    items = _lake(cfg, "items", ["item_id", "publish_ts"]).drop_duplicates("item_id")
    served = pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    catalogue = set(items.item_id[pd.to_datetime(items.publish_ts, utc=True) < served])
    clicks = _lake(cfg, "events", ["user_id", "item_id", "event_type", "dt"])
    clicks = clicks[(clicks.event_type == "click") & clicks.item_id.isin(catalogue)]
    clicks["day"] = pd.to_datetime(clicks.dt.astype(str)).dt.date
    first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
    window = clicks[(clicks.day >= first) & (clicks.day <= day)]
    truth = clicks.loc[clicks.day == day + dt.timedelta(days=1), ["user_id", "item_id"]].drop_duplicates()
    users = np.sort(truth.user_id.unique())

    ctx = load_context(cfg, day)
    feeds = recommend(ctx, users).rows
    feed_lists = feeds[["user_id", "position", "item_id"]].rename(columns={"position": "rank"})
    counts = window.item_id.value_counts().rename("n").reset_index()
    counts = counts.sort_values(["n", "item_id"], ascending=[False, True])
    own = window.groupby("user_id").item_id.agg(set)
    pop_lists = pd.DataFrame([(u, r, i) for u in users
                              for r, i in enumerate([i for i in counts.item_id if i not in own.get(u, set())][:k])],
                             columns=["user_id", "rank", "item_id"])

    warm = set(window.user_id)
    recorded = {}
    for segment, keep in (("all", lambda u: True), ("with_history", lambda u: u in warm),
                          ("without_history", lambda u: u not in warm)):
        mine = truth[truth.user_id.map(keep)]
        if mine.empty:
            continue
        for what, lists in (("feed", feed_lists), ("popularity", pop_lists)):
            recall, ndcg, n = _recall_ndcg(lists[lists.user_id.isin(mine.user_id)], mine)
            stored = _value(results, what, "recall", k, segment)
            assert stored.value == pytest.approx(recall, abs=1e-12), (what, segment)
            assert stored.n_users == n
            assert _value(results, what, "ndcg", k, segment).value == pytest.approx(ndcg, abs=1e-12), (what, segment)
            recorded[f"{what}/{segment}"] = round(recall, 4)
    record_property("recall@feed_length", recorded)

    # diversity of each feed, per user by brute force: the category_l1 shares' entropy (nats) and
    # 1 - the mean cosine over item pairs of the two-tower's item vectors
    category = _lake(cfg, "items", ["item_id", "category_l1", "dt"]).sort_values("dt")
    category = category.groupby("item_id").category_l1.last()
    vectors = pd.DataFrame(ctx.item_vectors, index=ctx.catalogue.item_id)
    entropies, ilds = [], []
    for _, feed in feeds.groupby("user_id").item_id:
        p = category.loc[feed].value_counts(normalize=True)
        entropies.append(-(p * np.log(p)).sum())
        v = vectors.loc[feed].to_numpy(np.float64)
        cos = [v[a] @ v[b] / np.linalg.norm(v[a]) / np.linalg.norm(v[b])
               for a in range(len(v)) for b in range(a + 1, len(v))]
        ilds.append(1 - np.mean(cos))
    assert _value(results, "feed", "category_entropy", k).value == pytest.approx(np.mean(entropies), rel=1e-9)
    assert _value(results, "feed", "ild", k).value == pytest.approx(np.mean(ilds), rel=1e-5)
    coverage = feeds.item_id.nunique() / len(catalogue)
    assert _value(results, "feed", "coverage", k).value == pytest.approx(coverage, rel=1e-12)


def test_the_merged_set_holds_every_channels_top_k(world, results: pd.DataFrame) -> None:
    """Every channel's top K (K = feed length) is inside its quota, so inside the merged set: the
    set's recall is at least each channel's, and the lists are as long as the settings allow."""
    cfg, _ = world
    s = cfg.serving.strategy(cfg.serving.default_strategy)
    whole = _value(results, "candidates", "recall", s.total_quota).value
    channels = {f"channel:{name}" for name in s.channels}
    assert channels <= set(results.what)
    for what in channels:
        assert _value(results, what, "recall", s.feed_length).value <= whole + 1e-12, what
    assert _value(results, "feed", "length", s.feed_length).value == s.feed_length
    assert 0 < _value(results, "candidates", "length", s.total_quota).value <= s.total_quota
    funnel = results[(results.what == "funnel") & (results.segment == "all")].set_index("metric").value
    assert funnel["merged"] <= funnel["retrieved"] and funnel["filtered"] <= funnel["merged"]
    assert funnel["feed"] == s.feed_length


def test_every_value_has_a_ci_over_its_users_and_a_min_users_flag(world, results: pd.DataFrame) -> None:
    cfg, _ = world
    assert list(results.columns) == list(RESULT_COLUMNS) and set(results.eval_days) == {1}
    means = results[(results.metric != "coverage") & (results.n_users > 0)]
    assert ((means.ci_low <= means.value + 1e-9) & (means.value <= means.ci_high + 1e-9)).all()
    feed = _value(results, "feed", "recall", cfg.serving.strategy(cfg.serving.default_strategy).feed_length)
    assert feed.ci_low < feed.value < feed.ci_high
    assert results[results.metric == "coverage"].ci_low.isna().all()  # not a mean over users
    assert (results.below_min_users == (results.n_users < cfg.evaluation.min_users)).all()


def test_ties_at_the_cut_go_to_the_lower_item() -> None:
    """Score descending, then catalogue row (= item_id) ascending: of four items tied at 0.5 for
    the last two places, rows 2 and 5 are kept, whatever the input order."""
    rows = np.array([0, 0, 0, 0, 0, 1, 1])
    items = np.array([9, 5, 7, 2, 1, 4, 3])
    score = np.array([0.5, 0.5, 0.9, 0.5, 0.5, 0.2, 0.2])
    assert ranked_lists(rows, items, score, 2, 3).tolist() == [[7, 1, 2], [3, 4, -1]]
    flip = np.arange(len(rows))[::-1]
    assert ranked_lists(rows[flip], items[flip], score[flip], 2, 3).tolist() == [[7, 1, 2], [3, 4, -1]]


def test_runs_are_kept_and_a_rerun_replaces_its_own(world, results: pd.DataFrame) -> None:
    cfg, day = world

    def stored() -> pd.DataFrame:
        with connect(cfg, read_only=True) as con:
            return con.execute(f"select eval_days, count(*) as n from {TABLE} where day = ? and strategy = ? "
                               "group by all order by all", [day, cfg.serving.default_strategy]).df()

    write_results(cfg, results.assign(eval_days=2))  # another run of the day (two evaluation days)
    write_results(cfg, results)  # the first one again
    assert stored().values.tolist() == [[1, len(results)], [2, len(results)]]


def test_the_report_section_shows_the_funnel(world, results: pd.DataFrame) -> None:
    cfg, _ = world
    page = serving_section(cfg)
    k = cfg.serving.strategy(cfg.serving.default_strategy).feed_length
    for heading in ("<h2>Recommendation path</h2>", "<h3>Funnel of the current feeds",
                    "<h3>Channel mix of the final feeds", "<h3>Feeds: exploration and diversity</h3>",
                    "<h3>Funnel evaluation, data through", f"<h3>Recall@{k} per user group",
                    "<h3>Funnel of the evaluated users"):
        assert heading in page, heading
    assert "not built yet" not in page and "<h3>Funnel evaluation history</h3>" in page
    feed = _value(results, "feed", "recall", k)
    history = embedded_specs(page)[-1]["data"]["values"]  # Recall@k per run: the feed, candidates, popularity
    assert {v["series"] for v in history} == {"feed", "candidates", "popularity"}
    assert [v["value"] for v in history if v["series"] == "feed"] == pytest.approx([feed.value])
    assert f"<td>feed</td><td>{feed.value:.4g}</td><td>{feed.n_users}</td>" in page  # the users scored


def test_the_report_section_says_what_is_not_built(platform: PlatformConfig) -> None:
    assert "not built yet" in serving_section(platform)
