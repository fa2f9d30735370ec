"""Benchmark the I2I similarities (models/retrieval/i2i.py) on synthetic positives.

    python benchmarks/bench_i2i.py                      # full scale: 1M users x 100k items x 20M
    python benchmarks/bench_i2i.py --users 100000 --items 20000 --interactions 2000000

(a) ItemCF and Swing (config/recpipe.yaml's settings) on a synthetic users x items matrix: wall
    seconds of each and the process's peak RSS after each (targets: both together <= 600 s, peak
    <= 8 GiB).
(b) Swing next to the straightforward reference (models/retrieval/i2i_reference.py) on a small matrix from
    the same generator (cap not binding), with and without damping: the speed ratio (reference
    seconds / the fast one's best of 3; target >= 20) and the largest absolute difference of the
    similarity matrices (target ~0).

The generator (numpy, seeded): user activity and item popularity follow power laws (Zipf exponents
0.5 and 1.0, drawn by inverse CDF); half of a user's draws come from their taste cluster of 1,000
items, so co-occurrences are not purely random.
Duplicate (user, item) draws collapse, so the matrix holds somewhat fewer positives than draws.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time

import numpy as np
import scipy.sparse as sp

from models.retrieval.cf_common import binary, cap_users_per_item
from models.retrieval.i2i import DEFAULT_BUDGET, itemcf, swing, swing_blocks
from models.retrieval.i2i_reference import swing_reference
from tasks.core.config import DEFAULT_CONFIG, load_config

GIB = 1 << 30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def zipf_ranks(rng: np.random.Generator, n: int, exponent: float, size: int) -> np.ndarray:
    """`size` draws of ranks 0..n-1 with P(rank r) ~ (r + 1)^-exponent (continuous inverse CDF)."""
    u = rng.random(size)
    if exponent == 1.0:
        x = (n + 1.0) ** u
    else:
        x = (((n + 1.0) ** (1 - exponent) - 1) * u + 1) ** (1 / (1 - exponent))
    return np.minimum(x.astype(np.int64) - 1, n - 1)


def synthetic_positives(users: int, items: int, interactions: int, seed: int) -> sp.csr_matrix:
    """Binary users x items CSR from `interactions` draws: user ~ Zipf(0.5) activity; item: with
    probability 1/2 ~ Zipf(1.0) within the user's taste cluster (items // 1000 clusters, at least
    1), else ~ Zipf(1.0) over all items; user and item ids shuffled."""
    rng = np.random.default_rng(seed)
    user = rng.permutation(users)[zipf_ranks(rng, users, 0.5, interactions)]
    clusters = max(1, items // 1000)
    per_cluster = items // clusters
    taste = rng.integers(0, clusters, users)
    in_cluster = taste[user] * per_cluster + zipf_ranks(rng, per_cluster, 1.0, interactions)
    anywhere = zipf_ranks(rng, items, 1.0, interactions)
    item = rng.permutation(items)[np.where(rng.random(interactions) < 0.5, in_cluster, anywhere)]
    key = np.sort(user * items + item)
    key = key[np.r_[True, key[1:] != key[:-1]]]
    indptr = np.r_[0, np.cumsum(np.bincount(key // items, minlength=users))]
    return sp.csr_matrix((np.ones(len(key)), key % items, indptr), shape=(users, items))


def describe(m: sp.csr_matrix) -> str:
    per_user, per_item = np.diff(m.indptr), np.bincount(m.indices, minlength=m.shape[1])
    return (
        f"{m.shape[0]:,} users x {m.shape[1]:,} items, {m.nnz:,} positives; per user: median "
        f"{np.median(per_user):.0f}, max {per_user.max():,}; per item: median {np.median(per_item):.0f}, "
        f"max {per_item.max():,}"
    )


def compare_with_reference(args: argparse.Namespace) -> None:
    """(b) fast Swing vs the reference on a small matrix, with and without damping."""
    cfg = load_config(DEFAULT_CONFIG).retrieval.swing
    m = synthetic_positives(args.sample_users, args.sample_items, args.sample_interactions, args.seed)
    cap = int(np.bincount(m.indices, minlength=m.shape[1]).max())
    print(f"(b) sample: {describe(m)}")
    for damping in (True, False):
        scfg = cfg.model_copy(update={"heavy_user_damping": damping, "max_users_per_item": max(cap, 2)})
        t_fast = np.inf
        for _ in range(3):  # the best of 3: the fast one takes a fraction of a second
            t0 = time.perf_counter()
            fast = sp.vstack([block for _, block in swing_blocks(m, scfg, args.seed)]).toarray()
            t_fast = min(t_fast, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = swing_reference(m, scfg.alpha, damping)
        t_ref = time.perf_counter() - t0
        diff = np.abs(fast - ref).max()
        print(
            f"(b) swing damping={damping}: fast {t_fast:.3f} s (best of 3), reference {t_ref:.1f} s, "
            f"speed ratio {t_ref / t_fast:,.0f}x (target >= 20x), max |fast - reference| {diff:.2e} "
            f"(largest similarity {ref.max():.3g}, relative {diff / ref.max():.1e})"
        )


def full_scale(args: argparse.Namespace) -> None:
    """(a) ItemCF and Swing on the synthetic matrix: seconds and peak RSS."""
    retrieval = load_config(DEFAULT_CONFIG).retrieval
    t0 = time.perf_counter()
    m = synthetic_positives(args.users, args.items, args.interactions, args.seed)
    print(f"(a) generated in {time.perf_counter() - t0:.1f} s: {describe(m)}; peak RSS {peak_rss_gib():.2f} GiB")
    capped = cap_users_per_item(binary(m), retrieval.swing.max_users_per_item, args.seed)
    print(f"(a) capped at {retrieval.swing.max_users_per_item} users per item: {capped.nnz:,} positives")
    del capped
    timings = {}
    for name, fit, cfg in (("itemcf", itemcf, retrieval.itemcf), ("swing", swing, retrieval.swing)):
        t0 = time.perf_counter()
        table = fit(m, cfg, args.seed, args.budget)
        timings[name] = time.perf_counter() - t0
        filled = (table.neighbours >= 0).sum(axis=1)
        print(
            f"(a) {name} ({cfg.model_dump()}): {timings[name]:.1f} s, peak RSS so far {peak_rss_gib():.2f} GiB; "
            f"neighbours per item: mean {filled.mean():.1f}, items with none {(filled == 0).sum():,}"
        )
    total = sum(timings.values())
    print(
        f"(a) itemcf + swing: {total:.1f} s (target <= 600 s: {'met' if total <= 600 else 'MISSED'}), "
        f"swing / itemcf time {timings['swing'] / timings['itemcf']:.1f}x, peak RSS {peak_rss_gib():.2f} GiB "
        f"(target <= 8 GiB: {'met' if peak_rss_gib() <= 8 else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--sample-users", type=int, default=2_000)
    parser.add_argument("--sample-items", type=int, default=1_000)
    parser.add_argument("--sample-interactions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="entries per block of items (memory bound)")
    parser.add_argument("--skip-full", action="store_true", help="only (b)")
    parser.add_argument("--verbose", action="store_true", help="log progress per block")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    compare_with_reference(args)
    if not args.skip_full:
        full_scale(args)


if __name__ == "__main__":
    main()
