"""faiss ANN indexes over L2-normalised vectors, scored by inner product (= cosine similarity).

Every index is an `IndexIDMap` around its base, so searches return the caller's ids (item ids),
not row numbers:

- flat (`IndexFlatIP`): exact, for fewer than `ann.exact_below` vectors;
- hnsw (`IndexHNSWFlat`, M, efConstruction, efSearch);
- ivf (`IndexIVFFlat` over an `IndexFlatIP` coarse quantizer, nlist, nprobe; trained on the vectors).

The search parameters (efSearch, nprobe) are stored in the index file, so a loaded index searches
as it did when its recall was measured.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from tasks.core.config import AnnConfig

log = logging.getLogger(__name__)

Kind = Literal["flat", "hnsw", "ivf"]
MIN_POINTS_PER_CENTROID = 39  # below this faiss k-means warns that training is unreliable


def _f32(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 2-D array (what faiss accepts)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return x


def choose_kind(n: int, cfg: AnnConfig) -> Kind:
    """flat below `cfg.exact_below` vectors, else the configured approximate kind."""
    return "flat" if n < cfg.exact_below else cfg.kind


def exact_index(vectors: np.ndarray, ids: np.ndarray) -> faiss.IndexIDMap:
    """Brute-force inner-product index over `vectors`, returning `ids`."""
    vectors = _f32(vectors)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def build_index(vectors: np.ndarray, ids: np.ndarray, cfg: AnnConfig) -> faiss.IndexIDMap:
    """An index of the kind `choose_kind` picks for len(vectors), with the configured parameters."""
    vectors, ids = _f32(vectors), np.ascontiguousarray(ids, dtype=np.int64)
    if len(vectors) != len(ids):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    n, dim = vectors.shape
    kind = choose_kind(n, cfg)
    start = time.perf_counter()
    if kind == "flat":
        return exact_index(vectors, ids)
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = cfg.ef_construction
        base.hnsw.efSearch = cfg.ef_search
        detail = f"M={cfg.hnsw_m} efConstruction={cfg.ef_construction} efSearch={cfg.ef_search}"
    else:
        nlist = max(1, min(cfg.ivf_nlist, n // MIN_POINTS_PER_CENTROID))
        base = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        base.train(vectors)
        base.nprobe = min(cfg.ivf_nprobe, nlist)
        detail = f"nlist={nlist} (configured {cfg.ivf_nlist}) nprobe={base.nprobe}"
    index = faiss.IndexIDMap(base)
    index.add_with_ids(vectors, ids)
    log.info("built %s index over %d x %d vectors (%s) in %.1f s", kind, n, dim, detail, time.perf_counter() - start)
    return index


def kind_of(index: faiss.IndexIDMap) -> Kind:
    """The kind of an index built (or loaded) here."""
    base = faiss.downcast_index(index.index)
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    if isinstance(base, faiss.IndexFlat):
        return "flat"
    raise TypeError(f"not an index built by models.retrieval.ann: {type(base).__name__}")


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores), each (len(queries), k), best first; -1 ids pad rows when the index holds
    fewer than k vectors (or an approximate search found fewer). An HNSW search explores at least
    k candidates (efSearch raised to k for this search only, the stored index unchanged)."""
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    params = None
    if isinstance(base, faiss.IndexHNSW) and base.hnsw.efSearch < k:
        params = faiss.SearchParametersHNSW()
        params.efSearch = k
    scores, ids = index.search(_f32(queries), k, params=params)
    return ids, scores


def recall_at_k(index: faiss.Index, exact: faiss.Index, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / |exact top-k|."""
    found, _ = search(index, queries, k)
    truth, _ = search(exact, queries, k)
    per_query = [
        len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(int((t >= 0).sum()), 1) for f, t in zip(found, truth)
    ]
    return float(np.mean(per_query))


def save(index: faiss.Index, path: Path) -> None:
    """Write the index (with its search parameters) to `path`."""
    faiss.write_index(index, str(path))


def load(path: Path) -> faiss.Index:
    """Read an index written by `save`."""
    return faiss.read_index(str(path))
