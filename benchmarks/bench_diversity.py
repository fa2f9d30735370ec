"""Diversity-stage benchmark (models/serving/diversity.py) against naive greedy baselines, same run, same data.

    python benchmarks/bench_diversity.py --n 500 --k 50 --dim 64

Data: --n candidates with uniform rel in [0, 1) and L2-normalised Gaussian float32 vectors (seeded).
Measurements (best of --repeats; each baseline once, asserting identical picks):
- DPP, --k slots, no window: fast greedy MAP (incremental Cholesky) vs the naive greedy that
  recomputes det(L_{Y∪{i}}) with numpy.linalg.det for every candidate at every step (batched over the
  candidates, the baseline's fastest form). Target: >= 100x.
- DPP with --window: the same, the naive determinants over the last window−1 picks plus i.
- DPP with spacing rules (--categories, --clusters random codes, default gaps) vs DPP without: the
  rules' overhead.
- MMR, --k slots, no window and --window: vs recomputing each step's max similarity from the vectors.
- interest_then_diverse, --pre-n candidates -> --n-interest + --n-diverse: running max similarity vs
  recomputing the max over the whole selected set at every pick.
BLAS runs on --threads threads on both sides (default 1: small matrix products on several threads
mostly wait on each other, which would inflate the baselines). Not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from models.serving.diversity import dpp, interest_then_diverse, mmr

TARGET_DPP_SPEEDUP = 100.0
T = TypeVar("T")


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_of(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    """(best seconds, last result) of `repeats` >= 1 calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return min(times), out


def naive_dpp(rel: np.ndarray, vectors: np.ndarray, k: int, theta: float, window: int | None) -> np.ndarray:
    """Greedy MAP with a full determinant per candidate per step (conditioning set: all picks, or the last window−1)."""
    v = vectors.astype(np.float64)
    q = np.exp(theta / (2 * (1 - theta)) * rel)
    kernel = q[:, None] * (v @ v.T) * q[None, :]
    picks: list[int] = []
    for _ in range(min(k, len(rel))):
        ctx = picks if window is None else picks[max(0, len(picks) - window + 1):]
        rest = np.setdiff1d(np.arange(len(rel)), picks)
        sets = np.column_stack([np.broadcast_to(np.array(ctx, dtype=np.int64), (len(rest), len(ctx))), rest])
        dets = np.linalg.det(kernel[sets[:, :, None], sets[:, None, :]])
        picks.append(int(rest[np.argmax(dets)]))
    return np.array(picks)


def naive_mmr(rel: np.ndarray, vectors: np.ndarray, k: int, eta: float, window: int | None) -> np.ndarray:
    """Greedy MMR recomputing max similarity to the last `window` picks (all picks) from the vectors at every step."""
    v = vectors.astype(np.float64)
    picks: list[int] = []
    taken = np.zeros(len(rel), dtype=bool)
    for _ in range(min(k, len(rel))):
        ctx = picks if window is None else picks[max(0, len(picks) - window):]
        div = -(v @ v[ctx].T).max(axis=1) if ctx else 0.0
        j = int(np.argmax(np.where(taken, -np.inf, eta * rel + (1 - eta) * div)))
        picks.append(j)
        taken[j] = True
    return np.array(picks)


def naive_interest_then_diverse(rel: np.ndarray, vectors: np.ndarray, n_interest: int, n_diverse: int,
                                eta: float) -> np.ndarray:
    """Top n_interest by rel, then n_diverse MMR picks against the whole selected set, recomputed every pick."""
    v = vectors.astype(np.float64)
    picks = np.argsort(-rel, kind="stable")[:n_interest].tolist()
    taken = np.zeros(len(rel), dtype=bool)
    taken[picks] = True
    for _ in range(n_diverse):
        score = eta * rel - (1 - eta) * (v @ v[picks].T).max(axis=1)
        j = int(np.argmax(np.where(taken, -np.inf, score)))
        picks.append(j)
        taken[j] = True
    return np.array(picks)


def report(name: str, fast: float, base: float, base_name: str, same: bool) -> None:
    assert same, f"{name}: picks differ from {base_name}"
    print(f"{name}: {fast * 1e3:.2f} ms vs {base_name} {base * 1e3:.1f} ms -> {base / fast:.0f}x (identical picks)")


def run(args: argparse.Namespace) -> None:
    """Every measurement, one line each."""
    rng = np.random.default_rng(args.seed)
    rel, vectors = rng.random(args.n), unit_vectors(rng, args.n, args.dim)
    k, theta, eta, w = args.k, args.theta, args.eta, args.window

    fast, picks = best_of(args.repeats, lambda: dpp(rel, vectors, k, theta).items)
    base, naive = best_of(1, lambda: naive_dpp(rel, vectors, k, theta, None))
    report(f"dpp {args.n}->{k} d={args.dim}", fast, base, "naive det", np.array_equal(picks, naive))
    print(f"dpp speed-up {base / fast:.0f}x (target >= {TARGET_DPP_SPEEDUP:.0f}x): "
          f"{'ok' if base / fast >= TARGET_DPP_SPEEDUP else 'MISSED'}")

    fast_w, picks = best_of(args.repeats, lambda: dpp(rel, vectors, k, theta, window=w).items)
    base, naive = best_of(1, lambda: naive_dpp(rel, vectors, k, theta, w))
    report(f"dpp window={w} {args.n}->{k}", fast_w, base, "naive windowed det", np.array_equal(picks, naive))

    categories, clusters = rng.integers(0, args.categories, args.n), rng.integers(0, args.clusters, args.n)
    ruled, sel = best_of(args.repeats, lambda: dpp(rel, vectors, k, theta, w, categories, clusters))
    print(f"dpp window={w} + spacing rules ({args.categories} categories, {args.clusters} clusters): "
          f"{ruled * 1e3:.2f} ms, {ruled / fast_w:.2f}x dpp without rules, {len(sel.relaxed)} relaxed slots")

    for window in (None, w):
        fast, picks = best_of(args.repeats, lambda window=window: mmr(rel, vectors, k, eta, window=window).items)
        base, naive = best_of(1, lambda window=window: naive_mmr(rel, vectors, k, eta, window))
        report(f"mmr window={window} {args.n}->{k}", fast, base, "naive recompute", np.array_equal(picks, naive))

    rel_pre, vectors_pre = rng.random(args.pre_n), unit_vectors(rng, args.pre_n, args.dim)
    n_int, n_div = args.n_interest, args.n_diverse
    fast, picks = best_of(args.repeats, lambda: interest_then_diverse(rel_pre, vectors_pre, n_int, n_div, eta))
    base, naive = best_of(1, lambda: naive_interest_then_diverse(rel_pre, vectors_pre, n_int, n_div, eta))
    report(f"interest_then_diverse {args.pre_n}->{n_int}+{n_div}", fast, base, "naive recompute",
           np.array_equal(picks, naive))


def main() -> None:
    """Parse the arguments and run under the BLAS thread limit."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="full-ranking candidates")
    parser.add_argument("--k", type=int, default=50, help="feed slots")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--theta", type=float, default=0.7)
    parser.add_argument("--eta", type=float, default=0.7)
    parser.add_argument("--window", type=int, default=10, help="sliding window of the windowed runs")
    parser.add_argument("--categories", type=int, default=30, help="category_l2 codes of the rules run")
    parser.add_argument("--clusters", type=int, default=100, help="content-cluster codes of the rules run")
    parser.add_argument("--pre-n", type=int, default=5000, help="pre-ranking candidates")
    parser.add_argument("--n-interest", type=int, default=200)
    parser.add_argument("--n-diverse", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of both sides (a feed is one request)")
    args = parser.parse_args()
    with threadpool_limits(limits=args.threads, user_api="blas"):
        run(args)


if __name__ == "__main__":
    main()
