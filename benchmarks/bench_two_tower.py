"""Benchmark two-tower training throughput: our training loop next to a bare torch loop.

    python benchmarks/bench_two_tower.py --examples 250000 --threads 1

Builds a synthetic click log (Zipf-popular items, 3 favourite categories per user) through the
real data path (vocabularies, sequences, TrainingSet), then times, on the same batches from the
same model initialisation: `tasks.retrieval.two_tower.fit` (batching, negatives, loss logging) and a
bare loop (batches materialised beforehand; forward, backward, optimizer step, nothing else); both
models must end the epoch with identical weights. Runs are
alternated `--repeats` times (the machine may be shared) and the best of each is kept. Prints
examples/s of both and the ratio ours / bare (target >= 0.8).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from models.common.features import build_vocabs
from models.common.training import optimizers
from models.common.tables import Catalogue, Events, UserTable
from models.retrieval.two_tower import TwoTower
from models.retrieval.two_tower_data import batches, training_set
from tasks.core.config import TwoTowerConfig
from tasks.core.contract import AGE_BUCKETS, GENDERS
from tasks.retrieval.two_tower import batch_loss, fit

US_PER_DAY = 86_400_000_000


def synthetic(n_examples: int, n_users: int, n_items: int, days: int, seed: int) -> tuple[Events, Catalogue, UserTable]:
    """A click log of `n_examples` positives over `days` days, time-ordered."""
    rng = np.random.default_rng(seed)
    n_l2 = 50
    item_l2 = rng.integers(0, n_l2, n_items).astype(np.int32)
    catalogue = Catalogue(
        item_id=np.arange(1, n_items + 1, dtype=np.int64) * 7,
        author_id=rng.integers(1, n_users // 20 + 2, n_items).astype(np.int64),
        category_l1=(item_l2 // 5).astype(np.int32),
        category_l2=item_l2,
        content_cluster=(item_l2 * 4 + rng.integers(0, 4, n_items)).astype(np.int32),
        publish_us=np.zeros(n_items, np.int64),
        l1_names=tuple(f"c{i}" for i in range(n_l2 // 5)),
        l2_names=tuple(f"c{i // 5}_{i}" for i in range(n_l2)),
    )
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    by_l2 = [np.flatnonzero(item_l2 == c) for c in range(n_l2)]
    favourite = rng.integers(0, n_l2, (n_users, 3))
    user = rng.integers(0, n_users, n_examples)
    cats = favourite[user, rng.integers(0, 3, n_examples)]
    item = np.empty(n_examples, np.int64)
    for c in range(n_l2):
        rows = np.flatnonzero(cats == c)
        p = popularity[by_l2[c]] / popularity[by_l2[c]].sum()
        item[rows] = rng.choice(by_l2[c], len(rows), p=p)
    ts = np.sort(rng.integers(0, days * US_PER_DAY, n_examples))
    day = (np.datetime64("2026-01-01", "D") + (ts // US_PER_DAY).astype("timedelta64[D]")).astype("datetime64[D]")
    events = Events(user.astype(np.int64) + 1, item, ts + 1_767_225_600_000_000, day)
    users = UserTable(
        user_id=np.arange(1, n_users + 1, dtype=np.int64),
        gender=rng.choice(np.array(GENDERS), n_users),
        age_bucket=rng.choice(np.array(AGE_BUCKETS), n_users),
        city_tier=rng.integers(0, 6, n_users).astype(np.int64),
    )
    return events, catalogue, users


def bare(model: TwoTower, batch_list: list, tt: TwoTowerConfig) -> float:
    """Seconds of a plain forward / backward / step loop over prepared batches."""
    steppers = optimizers(model, tt.learning_rate)
    model.train()
    started = time.perf_counter()
    for batch in batch_list:
        loss = batch_loss(model, batch, tt.temperature, tt.logq_correction)
        for opt in steppers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in steppers:
            opt.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=250_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--random-negatives", type=int, default=0)
    parser.add_argument("--hard-negatives", type=int, default=0, help="(synthetic data has no impressions: masked)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    tt = TwoTowerConfig(batch_size=args.batch_size, random_negatives=args.random_negatives,
                        hard_negatives=args.hard_negatives, seed=args.seed)

    started = time.perf_counter()
    events, catalogue, users = synthetic(args.examples, args.users, args.items, args.days, args.seed)
    vocabs = build_vocabs(catalogue, users, np.unique(events.user_id))
    first = events.day.min().astype(object)
    data = training_set(events, first, vocabs, catalogue, users, tt.sequence_length)
    rng = np.random.default_rng(args.seed)  # fit() below draws the same batches from the same seed
    batch_list = list(batches(data, tt.batch_size, rng, tt.random_negatives, tt.hard_negatives))
    print(f"data: {len(data):,} examples, {len(vocabs['user']):,} user rows, {len(vocabs['item']):,} item rows, "
          f"{len(batch_list)} batches of {tt.batch_size}, prepared in {time.perf_counter() - started:.1f} s; "
          f"torch threads {torch.get_num_threads()}")

    def fresh() -> TwoTower:
        torch.manual_seed(args.seed)
        return TwoTower({k: len(v) for k, v in vocabs.items()}, tt.dim)

    bare(fresh(), batch_list[:10], tt)  # warm-up: first-call allocations count for neither side
    ours_best = bare_best = 0.0
    for _ in range(args.repeats):
        bare_model, ours_model = fresh(), fresh()
        bare_best = max(bare_best, len(data) / bare(bare_model, batch_list, tt))
        ours_best = max(ours_best, fit(ours_model, data, tt, 1, np.random.default_rng(args.seed))[0]["examples_per_s"])
    same = all(torch.equal(a, b) for a, b in zip(bare_model.state_dict().values(), ours_model.state_dict().values()))
    print(f"same batches and updates (identical weights after the epoch): {same}")
    print(f"bare torch loop: {bare_best:,.0f} examples/s")
    print(f"our training loop: {ours_best:,.0f} examples/s")
    print(f"ratio ours / bare: {ours_best / bare_best:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
