"""Recommendation-funnel benchmark (tasks/serving/funnel.py `recommend`) on a synthetic serving context.

    python benchmarks/bench_serving.py --items 100000 --users 100000 --batch-users 5000 --requests 200 --threads 1

Builds a ServingContext in memory, no warehouse: a random catalogue (50 categories_l2 in 10 l1, 4
content clusters each, authors), click histories over `retrieval.train_window_days` (lognormal user
activity, 3 favourite categories per user, Zipf item popularity) and impressions over
`serving.quality_window_days`, segments, follows, fans, comments, KOL scores, quality, expiry and
pools. The models are real versions with random weights in a temporary artifact store, loaded by the
serving code: a TwoTower (its exported item and user vectors drawn around per-cluster centres, a
user's around the centres of their favourite categories: a random-weight tower maps every item into
one narrow cone, where HNSW returns fewer than k and DPP has nothing to diversify), a PreRanker
and a FullRanking (meta as the nightly tasks write it), a faiss index per two-tower pool built with
the config's `ann:` settings (HNSW over the whole catalogue, flat over the day-old items) and
published in the ANN store, an ItemCF-like neighbour table (50 random neighbours in the item's
content cluster) behind a U2I2I, and Popularity; no special-group models (residual, calibrator:
skipped as when none is trained). The strategy is the config's default strategy
(pre-ranking cut, fusion, DPP, exploration, protection) with only these channels; their quotas sum
to its total_quota (5,000), so a request goes 5,000 candidates (fewer once merged, and where a channel
runs short) -> 500 -> a feed of 50; the first output lines show the funnel and each channel's yield.

Measurements (on --threads threads: torch, BLAS, faiss):
1. online: --requests single-user `recommend` calls on random users: p50 / p99 latency against the
   50 ms target, and the p50 of each stage (Feeds.seconds) with its share of the request.
2. batch: feeds/s of --batch-users users in blocks of tasks/serving/blocks.BLOCK_USERS (in
   --processes worker processes) against the 500 feeds/s target and against the same users one at a time (--single-sample calls timed, the
   rate extrapolated to all of them): target >= 20x.
--profile adds a cProfile of one request and one block. No timing asserts; not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import logging
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from models.common.checkpoints import save_model
from models.common.features import build_vocabs, latest_sequences
from models.common.tables import Catalogue, Events, UserTable
from models.common.vocab import Vocab
from models.ranking import full as full_model
from models.ranking.pre import PreRanker
from models.ranking.pre import load_model as load_pre
from models.retrieval import ann
from models.retrieval.i2i import U2I2I, NeighbourTable
from models.retrieval.retriever import Popularity
from models.retrieval.two_tower import TwoTower
from models.retrieval.two_tower_retriever import TwoTowerRetriever
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig, load_config
from tasks.core.contract import AGE_BUCKETS, GENDERS
from tasks.ranking import full as full_ranking
from tasks.ranking import pre as preranking
from tasks.retrieval import ann_refresh
from tasks.retrieval import two_tower as two_tower_training
from tasks.serving.blocks import BLOCK_USERS, feeds_in_blocks
from tasks.serving.context import ServingContext
from tasks.serving.funnel import Feeds, recommend

STRATEGY = "bench"
STAGES = ("retrieval", "filters", "preranking", "ranking", "diversity", "output")
FUNNEL = ("retrieved", "merged", "filtered", "preranked", "feed")
TARGET_P99_MS = 50.0
TARGET_FEEDS_PER_S = 500.0
TARGET_BATCH_SPEEDUP = 20.0
US_PER_DAY = 86_400_000_000
N_L1, L2_PER_L1, CLUSTERS_PER_L2 = 10, 5, 4
FAVOURITES = 3  # favourite categories_l2 per user
PROMOTED = ("follow_promoting", "share_promoting", "comment_promoting")
PROMOTED_SIZE = 200
EXPLORATION_SIZE = 50  # per segment
CHANNELS = {  # quotas sum to the strategy's total_quota (5,000)
    "two_tower_30d": {"kind": "two_tower", "pool": "pool_30d", "quota": 1500},
    "two_tower_1d": {"kind": "two_tower", "pool": "pool_1d", "quota": 200},
    "itemcf": {"kind": "itemcf", "quota": 600},  # 20 seeds x 50 neighbours: about 500 for a typical user
    "popularity": {"kind": "popularity", "quota": 2100},
    **{p: {"kind": "pool", "pool": p, "quota": PROMOTED_SIZE} for p in PROMOTED},
}


# Config ---------------------------------------------------------------------------------------
def bench_config(root: Path, n_items: int) -> PlatformConfig:
    """The project config with its artifacts under `root`, the benchmark's pools, and one strategy:
    the default strategy with CHANNELS only (validated like config/recpipe.yaml)."""
    raw = load_config().model_dump(mode="json")
    segments = [s["name"] for s in raw["segments"]]
    raw["paths"] = {**raw["paths"], "data_root": str(root), "artifacts": str(root / "artifacts")}
    raw["pools"] = [
        {"name": "pool_30d", "window": "30d", "max_size": n_items},
        {"name": "pool_1d", "window": "1d", "max_size": n_items},
        *({"name": p, "window": "30d", "max_size": PROMOTED_SIZE} for p in PROMOTED),
        {"name": "exploration", "window": "30d", "segments": segments, "max_size": EXPLORATION_SIZE},
    ]
    serving = raw["serving"]
    base = serving["strategies"][serving["default_strategy"]]
    raw["serving"] = {**serving, "default_strategy": STRATEGY, "batch_strategies": [STRATEGY],
                      "strategies": {STRATEGY: {**base, "channels": CHANNELS, "segment_quotas": {}}}}
    if "experiments" in raw:  # experiment arms name the project's strategies, which the benchmark replaces
        raw["experiments"] = []
    return PlatformConfig.model_validate(raw)


# Synthetic world ------------------------------------------------------------------------------
def epoch_us(day: dt.date) -> int:
    return int((dt.datetime.combine(day, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def synthetic_catalogue(n_items: int, n_authors: int, end_us: int, rng: np.random.Generator) -> Catalogue:
    """Items published over the 60 days before `end_us`, sorted by id."""
    l2 = rng.integers(0, N_L1 * L2_PER_L1, n_items).astype(np.int32)
    return Catalogue(
        item_id=np.arange(1, n_items + 1, dtype=np.int64) * 7,
        author_id=rng.integers(1, n_authors + 1, n_items).astype(np.int64),
        category_l1=(l2 // L2_PER_L1).astype(np.int32),
        category_l2=l2,
        content_cluster=(l2 * CLUSTERS_PER_L2 + rng.integers(0, CLUSTERS_PER_L2, n_items)).astype(np.int32),
        publish_us=end_us - rng.integers(1, 60 * US_PER_DAY, n_items),
        l1_names=tuple(f"c{i}" for i in range(N_L1)),
        l2_names=tuple(f"c{i // L2_PER_L1}_{i}" for i in range(N_L1 * L2_PER_L1)),
    )


def synthetic_users(n_users: int, rng: np.random.Generator) -> UserTable:
    return UserTable(
        user_id=np.arange(1, n_users + 1, dtype=np.int64) * 3,
        gender=rng.choice(np.array(GENDERS), n_users),
        age_bucket=rng.choice(np.array(AGE_BUCKETS), n_users),
        city_tier=rng.integers(0, 6, n_users).astype(np.int64),
    )


def synthetic_events(n: int, user_ids: np.ndarray, activity: np.ndarray, favourite: np.ndarray, catalogue: Catalogue,
                     popularity: np.ndarray, first_us: int, days: int, focus: float, rng: np.random.Generator) -> Events:
    """n events over `days` days from `first_us`, in time order: a user drawn by activity, a share
    `focus` of them in one of the user's favourite categories (else any), the item by popularity."""
    user = rng.choice(len(user_ids), n, p=activity / activity.sum())
    n_l2 = len(catalogue.l2_names)
    cats = np.where(rng.random(n) < focus, favourite[user, rng.integers(0, FAVOURITES, n)], rng.integers(0, n_l2, n))
    item = np.empty(n, np.int64)
    for c in range(n_l2):
        rows, members = np.flatnonzero(cats == c), np.flatnonzero(catalogue.category_l2 == c)
        item[rows] = rng.choice(members, len(rows), p=popularity[members] / popularity[members].sum())
    ts = np.sort(first_us + rng.integers(0, days * US_PER_DAY, n))  # draws are i.i.d.: sorting ts alone keeps them random
    return Events(user_ids[user], item, ts, (ts // US_PER_DAY).astype("datetime64[D]"))


def cluster_neighbours(catalogue: Catalogue, top_k: int, rng: np.random.Generator) -> NeighbourTable:
    """ItemCF-like table: `top_k` random items of the item's content cluster, decreasing scores."""
    n = len(catalogue)
    order = np.argsort(catalogue.content_cluster, kind="stable")
    clusters = catalogue.content_cluster[order]
    start = np.searchsorted(clusters, catalogue.content_cluster, side="left")
    size = np.searchsorted(clusters, catalogue.content_cluster, side="right") - start
    neighbours = order[start[:, None] + (rng.random((n, top_k)) * size[:, None]).astype(np.int64)]
    neighbours = np.where(neighbours == np.arange(n)[:, None], -1, neighbours)
    scores = -np.sort(-rng.random((n, top_k)), axis=1)
    return NeighbourTable(neighbours, np.where(neighbours >= 0, scores, 0.0))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def spread_vectors(catalogue: Catalogue, favourite: np.ndarray, dim: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors, user vectors), L2-normalised: an item around its content cluster's centre, a
    user around the sum of one cluster centre of each favourite category_l2."""
    centres = rng.standard_normal((int(catalogue.content_cluster.max()) + 1, dim))
    items = unit(centres[catalogue.content_cluster] + rng.standard_normal((len(catalogue), dim)))
    clusters = favourite * CLUSTERS_PER_L2 + rng.integers(0, CLUSTERS_PER_L2, favourite.shape)
    users = unit(centres[clusters].sum(axis=1) + rng.standard_normal((len(favourite), dim)))
    return items, users


def publish_models(cfg: PlatformConfig, vocabs: dict[str, Vocab], catalogue: Catalogue, users: UserTable,
                   clicks: Events, item_vectors: np.ndarray, user_vectors: np.ndarray) -> dict[str, artifacts.Version]:
    """Random-weight two-tower (exporting the given vectors), pre-ranker and full ranker, published
    current as the nightly tasks do (same files, the meta keys serving reads)."""
    sizes = {k: len(v) for k, v in vocabs.items()}
    tt, pr, fr = cfg.retrieval.two_tower, cfg.ranking.preranking, cfg.ranking.full
    two_tower = TwoTower(sizes, tt.dim)

    def write_two_tower(folder: Path) -> dict[str, int]:
        save_model(folder, two_tower, vocabs)
        ids = np.unique(clicks.user_id)
        out = two_tower_training.export(folder, two_tower, vocabs, catalogue, users,
                                        [(ids, latest_sequences(clicks, ids, tt.sequence_length))])
        np.save(folder / "item_vectors.npy", item_vectors)  # the files export writes, spread (see the module doc)
        np.save(folder / "user_vectors.npy", user_vectors[np.searchsorted(users.user_id, np.load(folder / "user_ids.npy"))])
        return out

    pre = PreRanker(sizes, pr.dim, len(pr.targets))
    full = full_model.FullRanking(full_ranking.architecture(fr, vocabs))
    return {
        "two_tower": artifacts.publish(
            registry.model_store(cfg, two_tower_training.MODEL), write_two_tower,
            {"model": two_tower_training.MODEL, "config": {"positive_event": cfg.retrieval.positive_event,
                                                          "two_tower": tt.model_dump(mode="json")}}),
        "preranking": artifacts.publish(
            registry.model_store(cfg, preranking.MODEL), lambda folder: save_model(folder, pre, vocabs),
            {"model": preranking.MODEL, "targets": list(pr.targets),
             "config": {"preranking": pr.model_dump(mode="json"), "sequence_length": fr.sequence_length}}),
        "full_ranking": artifacts.publish(
            registry.model_store(cfg, full_ranking.MODEL), lambda folder: full_model.save_model(folder, full, vocabs),
            {"model": full_ranking.MODEL, "heads": list(RANKING_HEADS), "config": {"full": fr.model_dump(mode="json")}}),
    }


def publish_index(cfg: PlatformConfig, pool: str, vectors: np.ndarray, ids: np.ndarray,
                  model_version: str) -> artifacts.Version:
    """A faiss index of the pool's item vectors, built with the config's `ann:` settings and
    published current in the ANN store as ann_refresh does."""
    index = ann.build_index(vectors, ids, cfg.ann)

    def write(folder: Path) -> dict:
        ann.save(index, folder / ann_refresh.INDEX_FILE)
        np.save(folder / ann_refresh.IDS_FILE, ids)
        return {}

    return artifacts.publish(ann_refresh.index_store(cfg, "two_tower", pool), write,
                             {"model": "two_tower", "pool": pool, "model_version": model_version, "n_items": len(ids),
                              "kind": ann.kind_of(index)})


def synthetic_context(args: argparse.Namespace, root: Path) -> tuple[ServingContext, str]:
    """The serving context over the synthetic world, every model loaded from its published version;
    and a one-line summary."""
    rng = np.random.default_rng(args.seed)
    cfg = bench_config(root, args.items)
    day = dt.date(2026, 1, 30)
    end_us = epoch_us(day + dt.timedelta(days=1))
    catalogue = synthetic_catalogue(args.items, max(args.items // 20, 1), end_us, rng)
    users = synthetic_users(args.users, rng)
    activity = rng.lognormal(0.0, 1.0, args.users)
    favourite = rng.integers(0, len(catalogue.l2_names), (args.users, FAVOURITES))
    popularity = 1.0 / rng.permutation(np.arange(1, args.items + 1)) ** 0.8
    window, quality_days = cfg.retrieval.train_window_days, cfg.serving.quality_window_days
    clicks = synthetic_events(args.users * args.clicks_per_user, users.user_id, activity, favourite, catalogue,
                              popularity, end_us - window * US_PER_DAY, window, 0.8, rng)
    impressions = synthetic_events(args.users * args.impressions_per_user, users.user_id, activity, favourite,
                                   catalogue, popularity, end_us - quality_days * US_PER_DAY, quality_days, 0.5, rng)
    quality_first = np.datetime64(day - dt.timedelta(days=quality_days - 1))
    c = np.bincount(clicks.item[clicks.day >= quality_first], minlength=args.items).astype(np.float64)
    i = np.bincount(impressions.item, minlength=args.items).astype(np.float64)
    m = cfg.serving.quality_prior_weight
    quality = (c + m * c.sum() / max(i.sum(), 1.0)) / (i + m)

    segment_names = [s.name for s in cfg.segments]
    pick = (rng.random(args.users) / 0.08).astype(np.int64)  # 8% of the users in each segment, the rest in none
    segments = {int(u): (segment_names[p],) for u, p in zip(users.user_id, pick) if p < len(segment_names)}
    follows = rng.random(args.users) < 0.5
    fans_by_author = rng.lognormal(2.0, 1.5, catalogue.author_id.max() + 1).astype(np.int64).astype(np.float64)
    kol = rng.random(args.users) < 0.01
    by_quality = np.argsort(-quality, kind="stable")
    fresh = catalogue.publish_us >= end_us - US_PER_DAY
    pools = {
        "pool_30d": {"all": by_quality},
        "pool_1d": {"all": by_quality[fresh[by_quality]]},
        **{p: {"all": np.sort(rng.choice(args.items, PROMOTED_SIZE, replace=False))} for p in PROMOTED},
        "exploration": {g: rng.choice(args.items, EXPLORATION_SIZE, replace=False) for g in segment_names},
    }

    vocabs = build_vocabs(catalogue, users, np.unique(clicks.user_id))
    versions = publish_models(cfg, vocabs, catalogue, users, clicks,
                              *spread_vectors(catalogue, favourite, cfg.retrieval.two_tower.dim, rng))
    two_tower = TwoTowerRetriever(versions["two_tower"], catalogue, clicks, users)
    indexes = {pool: publish_index(cfg, pool, two_tower.item_vectors[rows], catalogue.item_id[rows],
                                   versions["two_tower"].name)
               for pool, rows in ((p, np.sort(pools[p]["all"])) for p in ("pool_30d", "pool_1d"))}
    pre, full = versions["preranking"], versions["full_ranking"]
    ctx = ServingContext(
        cfg=cfg, day=day, catalogue=catalogue, users=users, clicks=clicks, impressions=impressions,
        segments=segments, follows_per_user=dict(zip(users.user_id[follows].tolist(),
                                                     rng.integers(1, 200, int(follows.sum())).tolist())),
        fans=fans_by_author[catalogue.author_id], comments=rng.poisson(3.0, args.items).astype(np.float64),
        kol_score=dict(zip(users.user_id[kol].tolist(), rng.random(int(kol.sum())).tolist())),
        quality=quality, expired=rng.random(args.items) < 0.01, pools=pools, item_vectors=two_tower.item_vectors,
        retrievers={
            "itemcf": U2I2I("itemcf", cluster_neighbours(catalogue, cfg.retrieval.itemcf.top_k, rng), clicks,
                            cfg.retrieval.seed_items),
            "popularity": Popularity(clicks, args.items),
        },
        indexes={pool: ann.load(v.path / ann_refresh.INDEX_FILE) for pool, v in indexes.items()},  # as load_context
        two_tower=two_tower, pre=(*load_pre(pre.path), pre), full=(*full_model.load_model(full.path), full),
        versions={**{name: v.name for name, v in versions.items()},
                  **{f"ann:two_tower:{pool}": v.name for pool, v in indexes.items()}},
    ).prepare()  # the derived indexes, built at load as load_context does
    summary = (f"{args.items:,} items, {args.users:,} users ({len(np.unique(clicks.user_id)):,} with clicks), "
               f"{len(clicks):,} clicks over {window} d, {len(impressions):,} impressions over {quality_days} d; "
               f"ANN: {indexes['pool_30d'].meta['kind']} over {len(pools['pool_30d']['all']):,} items (pool_30d), "
               f"{indexes['pool_1d'].meta['kind']} over {len(pools['pool_1d']['all']):,} (pool_1d)")
    return ctx, summary


# Measurements ---------------------------------------------------------------------------------
def check_channels(ctx: ServingContext, n: int = 20) -> None:
    """SystemExit naming the channels that return nothing for the first n users (the synthetic
    context no longer matches what the funnel reads), so they are not timed as free."""
    funnel = recommend(ctx, ctx.users.user_id[:n], STRATEGY).funnel
    empty = [name for name in CHANNELS if not funnel[f"from_{name}"].any()]
    if empty:
        raise SystemExit(f"channels {empty} retrieved nothing: the synthetic ServingContext is out of date "
                         f"with tasks/serving (broken: {ctx.broken})")


def timed(ctx: ServingContext, user_ids: np.ndarray) -> tuple[float, Feeds]:
    """(seconds, feeds) of one `recommend` call."""
    t0 = time.perf_counter()
    out = recommend(ctx, user_ids, STRATEGY)
    return time.perf_counter() - t0, out


def stage_line(label: str, seconds: list[dict[str, float]], total: float, reduce: Callable[[np.ndarray], float]) -> str:
    """'label: stage x ms (share %), ...' with `reduce` over the calls of each stage."""
    parts = []
    for stage in STAGES:
        value = reduce(np.array([s.get(stage, 0.0) for s in seconds]))
        parts.append(f"{stage} {value * 1e3:,.1f} ms ({100 * value / max(total, 1e-12):.0f}%)")
    return f"{label}: " + ", ".join(parts)


def online(ctx: ServingContext, args: argparse.Namespace, rng: np.random.Generator) -> None:
    """--requests single-user calls on random users."""
    users = rng.choice(ctx.users.user_id, args.requests)
    for u in users[:3]:  # warm-up: index loads, first torch calls
        recommend(ctx, np.array([u]), STRATEGY)
    times, seconds, funnels = [], [], []
    for u in users:
        t, out = timed(ctx, np.array([u]))
        times.append(t)
        seconds.append(out.seconds)
        funnels.append(out.funnel)
    funnel = pd.concat(funnels)
    p50, p99 = np.percentile(times, [50, 99])
    with_history = ctx.has_history(users).mean()
    print("funnel per request (mean): " + " -> ".join(f"{c} {funnel[c].mean():,.0f}" for c in FUNNEL)
          + f" ({100 * with_history:.0f}% of the users with clicks)")
    s = ctx.cfg.serving.strategy(STRATEGY)
    print("retrieved per channel (mean / quota): " + ", ".join(
        f"{name} {funnel[f'from_{name}'].mean():,.0f}/{c.quota:,}" for name, c in s.channels.items()))
    print(f"online: {args.requests} single-user requests: p50 {p50 * 1e3:,.1f} ms, p99 {p99 * 1e3:,.1f} ms, "
          f"mean {np.mean(times) * 1e3:,.1f} ms; p99 / target {TARGET_P99_MS:.0f} ms = {p99 * 1e3 / TARGET_P99_MS:.2f}x "
          f"({'ok' if p99 * 1e3 <= TARGET_P99_MS else 'MISSED'})")
    print(stage_line("online stages, p50 (share of the request p50)", seconds, p50, np.median))


def batch(ctx: ServingContext, args: argparse.Namespace, rng: np.random.Generator) -> None:
    """--batch-users users in blocks of BLOCK_USERS (in --processes worker processes, as the batch
    feeds with serving.processes) vs --single-sample of them one at a time."""
    users = np.sort(rng.choice(ctx.users.user_id, min(args.batch_users, len(ctx.users.user_id)), replace=False))
    seconds, rows = [], []
    t0 = time.perf_counter()
    for _, _, out in feeds_in_blocks(ctx, [(STRATEGY, None, users)], args.processes):  # as tasks/serving/batch.compute_feeds
        rows.append(out.rows)
        seconds.append(out.seconds)
    pd.concat(rows, ignore_index=True)
    blocks_s = time.perf_counter() - t0
    blocks_rate = len(users) / blocks_s
    sample = users[: args.single_sample]
    t0 = time.perf_counter()
    for u in sample:
        recommend(ctx, np.array([u]), STRATEGY)
    single_rate = len(sample) / (time.perf_counter() - t0)
    print(f"batch: {len(users):,} users in {len(seconds)} block(s) of {BLOCK_USERS}, {args.processes} process(es): "
          f"{blocks_rate:,.1f} feeds/s "
          f"({blocks_s:,.1f} s); / target {TARGET_FEEDS_PER_S:.0f} feeds/s = {blocks_rate / TARGET_FEEDS_PER_S:.2f}x "
          f"({'ok' if blocks_rate >= TARGET_FEEDS_PER_S else 'MISSED'})")
    print(stage_line("batch stages per block, mean (share of a block)", seconds,
                     blocks_s * min(args.processes, len(seconds)) / len(seconds), np.mean))
    print(f"batch vs one at a time: {len(sample)} single calls (the first of the same users) timed, "
          f"{single_rate:,.2f} feeds/s, extrapolated to all {len(users):,}: {len(users) / single_rate:,.0f} s; "
          f"blocks / single = {blocks_rate / single_rate:.1f}x (target >= {TARGET_BATCH_SPEEDUP:.0f}x: "
          f"{'ok' if blocks_rate / single_rate >= TARGET_BATCH_SPEEDUP else 'MISSED'})")


def profile(ctx: ServingContext, rng: np.random.Generator, top: int) -> None:
    """cProfile of one single-user request and one block: top functions by own time and by cumulative time."""
    for label, users in (("one request", rng.choice(ctx.users.user_id, 1)),
                         (f"one block of {BLOCK_USERS}", np.sort(rng.choice(ctx.users.user_id, BLOCK_USERS, replace=False)))):
        prof = cProfile.Profile()
        prof.runcall(recommend, ctx, users, STRATEGY)
        for key in ("tottime", "cumulative"):
            print(f"--- profile of {label}, top {top} by {key}")
            pstats.Stats(prof).strip_dirs().sort_stats(key).print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--clicks-per-user", type=int, default=20, help="mean, over the retrieval window")
    parser.add_argument("--impressions-per-user", type=int, default=100, help="mean, over the quality window")
    parser.add_argument("--batch-users", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--single-sample", type=int, default=200, help="single calls timed for the batch comparison")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1, help="batch: worker processes (serving.processes), one thread each")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile one request and one block")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        t0 = time.perf_counter()
        ctx, summary = synthetic_context(args, Path(tmp))
        s = ctx.cfg.serving.strategy(STRATEGY)
        print(f"setup in {time.perf_counter() - t0:,.1f} s: {summary}")
        print(f"strategy: {len(s.channels)} channels, quotas {s.total_quota:,} -> pre-ranking "
              f"{s.preranking.interest} + {s.preranking.diverse} -> feed {s.feed_length} ({s.diversity.method}); "
              f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        check_channels(ctx)
        rng = np.random.default_rng(args.seed + 1)
        online(ctx, args, rng)
        batch(ctx, args, rng)
        if args.profile:
            profile(ctx, rng, args.profile_top)


if __name__ == "__main__":
    main()
