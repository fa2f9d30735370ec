"""ANN benchmark: HNSW and IVF (models/retrieval/ann.py) against exact inner-product search, same run, same data.

    python benchmarks/bench_ann.py --n 1000000 --dim 64 --queries 1000

Data: a deterministic Gaussian mixture (--clusters centres, unit-variance noise around each),
L2-normalised; queries are drawn from the same mixture. For each kind: build seconds, and for each
search setting (--ef-search for HNSW, --nprobe for IVF; defaults from config `ann:`) recall@k
against exact search (IndexFlatIP) and queries/s next to the exact queries/s (best of --repeats
batched searches of all queries, same threads). Target: recall >= 0.95 at >= 10x exact
throughput. Not a test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable

import faiss
import numpy as np

from models.retrieval import ann
from tasks.core.config import AnnConfig, load_config

TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
CHUNK = 100_000


def mixture(n: int, dim: int, clusters: int, rng: np.random.Generator, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) normalised float32 points around `clusters` Gaussian centres (drawn when not given)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) if centres is None else centres
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        x = centres[rng.integers(clusters, size=hi - lo)] + rng.standard_normal((hi - lo, dim), np.float32)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    defaults = load_config().ann
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--k", type=int, default=defaults.recall_k)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", nargs="+", choices=["hnsw", "ivf"], default=["hnsw", "ivf"])
    p.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m)
    p.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    p.add_argument("--ef-search", type=int, nargs="+", default=[defaults.ef_search])
    p.add_argument("--nlist", type=int, default=defaults.ivf_nlist)
    p.add_argument("--nprobe", type=int, nargs="+", default=[defaults.ivf_nprobe])
    p.add_argument("--threads", type=int, default=faiss.omp_get_max_threads())
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # a long run shows its progress
    faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    data, centres = mixture(args.n, args.dim, args.clusters, rng)
    queries, _ = mixture(args.queries, args.dim, args.clusters, rng, centres)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"data: {args.n:,} x {args.dim} ({args.clusters} clusters), {args.queries} queries, k={args.k}, "
          f"{args.threads} threads; generated in {time.perf_counter() - t0:.1f} s")

    exact = ann.exact_index(data, ids)
    exact_s = best_seconds(lambda: ann.search(exact, queries, args.k), args.repeats)
    exact_qps = args.queries / exact_s
    print(f"exact   (IndexFlatIP)                    {exact_qps:10,.0f} q/s")

    rows = []
    for kind in args.kinds:
        cfg = AnnConfig(exact_below=1, kind=kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                        ivf_nlist=args.nlist)
        t0 = time.perf_counter()
        index = ann.build_index(data, ids, cfg)
        build_s = time.perf_counter() - t0
        base = faiss.downcast_index(index.index)
        label = (f"hnsw M={args.hnsw_m} efC={args.ef_construction}" if kind == "hnsw"
                 else f"ivf nlist={base.nlist}")
        print(f"{label}: built in {build_s:.1f} s")
        for value in (args.ef_search if kind == "hnsw" else args.nprobe):
            if kind == "hnsw":
                base.hnsw.efSearch = value
            else:
                base.nprobe = value
            recall = ann.recall_at_k(index, exact, queries, args.k)
            qps = args.queries / best_seconds(lambda: ann.search(index, queries, args.k), args.repeats)
            ok = recall >= TARGET_RECALL and qps >= TARGET_SPEEDUP * exact_qps
            setting = f"efSearch={value}" if kind == "hnsw" else f"nprobe={value}"
            rows.append((label, setting, build_s, recall, qps, qps / exact_qps, ok))
            print(f"  {setting:<14} recall@{args.k} {recall:.4f}  {qps:10,.0f} q/s  {qps / exact_qps:6.1f}x exact  "
                  f"{'meets' if ok else 'misses'} target")

    print(f"\nsummary (target recall@{args.k} >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x exact = "
          f"{TARGET_SPEEDUP * exact_qps:,.0f} q/s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB)")
    print(f"{'index':<28} {'search':<14} {'build s':>8} {'recall':>7} {'q/s':>10} {'x exact':>8}  target")
    for label, setting, build_s, recall, qps, speedup, ok in rows:
        print(f"{label:<28} {setting:<14} {build_s:8.1f} {recall:7.4f} {qps:10,.0f} {speedup:8.1f}  {'yes' if ok else 'no'}")


if __name__ == "__main__":
    main()
