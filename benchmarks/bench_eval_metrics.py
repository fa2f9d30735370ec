"""Benchmark the per-user offline metrics (tasks/core/eval_metrics.py) against a per-user loop.

    python benchmarks/bench_eval_metrics.py --users 200000 --items 20000 --k 100

The metrics find each user's truth items in the top K of all users at once (one sorted array of
(user, item) keys), once for Recall, NDCG and HitRate (`user_terms`); the baseline, measured in the same run, is the former implementation: each
metric tests membership user by user (np.isin per user). Random lists (some -1 padded) and truth sets of 1 to
8 clicks; both give identical values (checked), the ratio is baseline / vectorised seconds of
Recall@K, NDCG@K, HitRate@K and tail Recall@K together, as the nightly evaluation computes them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tasks.core import eval_metrics as m


def _loop_hits(retrieved: np.ndarray, truth: list[np.ndarray], k: int) -> np.ndarray:
    top = retrieved[:, :k]
    return np.array([np.isin(row, t) & (row >= 0) for row, t in zip(top, truth)], dtype=bool)


def _loop_recall(retrieved: np.ndarray, truth: list[np.ndarray], k: int) -> np.ndarray:
    sizes = np.array([len(np.unique(t)) for t in truth], dtype=np.float64)
    return _loop_hits(retrieved, truth, k).sum(axis=1) / sizes


def _loop_metrics(retrieved: np.ndarray, truth: list[np.ndarray], k: int, tail: np.ndarray) -> list[np.ndarray]:
    """Recall, NDCG, hit and tail recall per user, each metric on its own, one user at a time (as
    the former implementation)."""
    hits = _loop_hits(retrieved, truth, k)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal = np.array([discounts[: min(len(np.unique(t)), hits.shape[1])].sum() for t in truth])
    tail_truth = [np.unique(t[tail[t]]) for t in truth]
    keep = np.array([len(t) > 0 for t in tail_truth])
    tail_recall = np.full(len(truth), np.nan)
    tail_recall[keep] = _loop_recall(retrieved[keep], [t for t in tail_truth if len(t)], k)
    return [_loop_recall(retrieved, truth, k), (hits * discounts).sum(axis=1) / ideal,
            _loop_hits(retrieved, truth, k).any(axis=1).astype(np.float64), tail_recall]


def _metrics(retrieved: np.ndarray, truth: list[np.ndarray], k: int, tail: np.ndarray) -> list[np.ndarray]:
    """The same four, as the nightly evaluation computes them (user_terms: the truth looked up once)."""
    terms = m.user_terms(retrieved, truth, (k,))
    return [*terms.T, m.user_tail_recall(retrieved, truth, k, tail)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    retrieved = rng.integers(0, args.items, (args.users, args.k))
    retrieved[rng.random(args.users) < 0.05, args.k // 2:] = -1  # short lists, padded
    truth = [rng.integers(0, args.items, n) for n in rng.integers(1, 9, args.users)]
    tail = rng.random(args.items) < 0.8
    seconds = {}
    for name, fn in (("baseline (per-user loop)", _loop_metrics), ("vectorised", _metrics)):
        started = time.perf_counter()
        values = fn(retrieved, truth, args.k, tail)
        seconds[name] = time.perf_counter() - started
        print(f"{name:26s} {seconds[name]:7.2f} s  ({args.users / seconds[name]:,.0f} users/s)")
        if name == "baseline (per-user loop)":
            expected = values
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(expected, values)), "the metrics differ"
    print(f"identical values; ratio baseline / vectorised: {seconds['baseline (per-user loop)'] / seconds['vectorised']:.1f}x "
          f"({args.users:,} users, {args.items:,} items, K = {args.k})")


if __name__ == "__main__":
    main()
