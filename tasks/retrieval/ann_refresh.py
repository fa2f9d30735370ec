"""ANN index refresh (docs/METHODS.md "ANN indexes"): one faiss index per (vector model, content pool), rebuilt when
the pool's current version, the model's current version or the `ann:` config changes.

A refresh reads the pool's current members from the warehouse (read-only) and the model's current
vectors (artifact store `models/<model>`: item_ids.npy, item_vectors.npy, user_ids.npy,
user_vectors.npy, L2-normalised float32), indexes the pool's items that have a vector (two-tower:
items published after the version's training get one from its item tower), and checks
recall@`ann.recall_k` against exact search on `ann.sample_queries` sampled user vectors. An
approximate index under `ann.min_recall` raises a data-quality alert and is not published (the
previous index stays current); otherwise it is published atomically into the artifact store
`ann/<model>/<pool>` (index.faiss, item_ids.npy, meta.json) and old versions are pruned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.common.checkpoints import WEIGHTS
from models.retrieval import ann
from models.retrieval.two_tower_retriever import catalogue_vectors
from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.core.storage import Location
from tasks.core.warehouse import connect, table_names
from tasks.ops.alerts import Alert, DataQualityRejected, raise_alert
from tasks.retrieval.data import connect_read, load_catalogue

log = logging.getLogger(__name__)

QUERY_SEED = 20260101  # the sampled recall queries are the same for every build of a version
INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.npy"

Status = Literal["published", "rejected", "up_to_date", "skipped"]


class AnnRecallRejected(DataQualityRejected):
    """A rebuilt index missed `ann.min_recall`; the previous index stays current."""


@dataclass(frozen=True)
class RefreshOutcome:
    """What one (model, pool) refresh did; `version` is the index version current afterwards."""

    model: str
    pool: str
    status: Status
    reason: str = ""
    version: str | None = None
    n_items: int = 0
    kind: str | None = None
    recall: float | None = None
    build_seconds: float | None = None


@dataclass(frozen=True)
class Vectors:
    """A vector model's current version: item and user vectors (rows L2-normalised)."""

    version: str
    item_ids: np.ndarray
    item_vectors: np.ndarray
    user_vectors: np.ndarray


def index_store(cfg: PlatformConfig, model: str, pool: str) -> Location:
    return cfg.artifacts_dir / "ann" / model / pool


def _array(folder: Path, name: str, dtype: type) -> np.ndarray:
    arr = np.load(folder / name)
    if arr.dtype != dtype:
        raise ValueError(f"{folder / name}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
    return arr


def _normalised(folder: Path, name: str) -> np.ndarray:
    vectors = _array(folder, name, np.float32)
    norms = np.linalg.norm(vectors, axis=1) if vectors.ndim == 2 else None
    if norms is None or not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{folder / name}: expected a 2-D array of L2-normalised rows")
    return vectors


def load_vectors(version: artifacts.Version) -> Vectors:
    """The vectors of a model version, checked against the vector-model contract."""
    folder = version.path
    item_ids = _array(folder, "item_ids.npy", np.int64)
    items = _normalised(folder, "item_vectors.npy")
    users = _normalised(folder, "user_vectors.npy")
    if len(items) != len(item_ids) or items.shape[1] != users.shape[1] or not len(users):
        raise ValueError(
            f"{folder}: {len(item_ids)} item ids, item vectors {items.shape}, user vectors {users.shape}"
        )
    return Vectors(version.name, item_ids, items, users)


def with_new_items(cfg: PlatformConfig, model: str, version: artifacts.Version, vectors: Vectors,
                   item_ids: np.ndarray) -> Vectors:
    """`vectors` plus the vectors of `item_ids` the version has none for (items published after its
    training), when the model can encode an item from its features (two-tower's item tower);
    otherwise unchanged."""
    missing = np.setdiff1d(item_ids, vectors.item_ids)
    if model != "two_tower" or not (version.path / WEIGHTS).exists() or not len(missing):
        return vectors
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, dt.date.max - dt.timedelta(days=1))
    catalogue = catalogue.subset(np.flatnonzero(np.isin(catalogue.item_id, missing)))
    ids = np.r_[vectors.item_ids, catalogue.item_id]
    items = np.r_[vectors.item_vectors, catalogue_vectors(version, catalogue)]
    order = np.argsort(ids, kind="stable")
    log.info("%s %s: %d pool items published after its training encoded by the item tower",
             model, version.name, len(catalogue))
    return dataclasses.replace(vectors, item_ids=ids[order], item_vectors=items[order])


def read_pool_items(cfg: PlatformConfig, pool: str) -> tuple[str | None, np.ndarray]:
    """(current version, distinct item ids over all segments) of a pool; (None, []) before its
    first published version."""
    with connect(cfg, read_only=True) as con:
        if "pool_current_members" not in table_names(con):
            return None, np.empty(0, np.int64)
        rows = con.execute(
            "select distinct version, item_id from pool_current_members where pool = ? order by item_id", [pool]
        ).fetchnumpy()
    versions = sorted(set(rows["version"].tolist()))
    if len(versions) > 1:
        raise ValueError(f"pool {pool}: pool_current_members holds several versions {versions}")
    return (versions[0] if versions else None), rows["item_id"].astype(np.int64)


def _sample_queries(users: np.ndarray, n: int) -> np.ndarray:
    rows = np.random.default_rng(QUERY_SEED).choice(len(users), size=min(n, len(users)), replace=False)
    return users[np.sort(rows)]


def _alert_low_recall(cfg: PlatformConfig, meta: dict[str, Any], previous: str | None) -> None:
    ann = cfg.ann
    raise_alert(
        Alert(
            kind="data_quality",
            severity="warning",
            title=(
                f"ANN index {meta['model']} x {meta['pool']}: recall@{meta['recall_k']} {meta['recall']:.4f} "
                f"< {ann.min_recall}, not published; the previous index stays current"
            ),
            source=f"ann_refresh.{registry.ann_task_id(meta['model'], meta['pool'])}",
            details={**{k: meta[k] for k in ("model", "pool", "recall", "recall_k", "kind", "n_items",
                                              "pool_version", "model_version")},
                     "min_recall": ann.min_recall, "queries": meta["queries"], "previous_index": previous},
        ),
        cfg,
    )


def _build_checked(cfg: PlatformConfig, items: np.ndarray, ids: np.ndarray, users: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The index over `items`, and its kind, build seconds and recall@k against exact search on
    sampled user vectors (1.0 for an exact index, by construction)."""
    t0 = time.perf_counter()
    index = ann.build_index(items, ids, cfg.ann)
    build_s = time.perf_counter() - t0
    kind = ann.kind_of(index)
    queries = _sample_queries(users, cfg.ann.sample_queries)
    k = min(cfg.ann.recall_k, len(ids))
    t0 = time.perf_counter()
    recall = 1.0 if kind == "flat" else ann.recall_at_k(index, ann.exact_index(items, ids), queries, k)
    log.info("%s index over %d items built in %.2f s, recall@%d %.4f on %d queries (%.2f s)",
             kind, len(ids), build_s, k, recall, len(queries), time.perf_counter() - t0)
    return index, {"kind": kind, "recall": recall, "recall_k": k, "queries": len(queries),
                   "build_seconds": round(build_s, 3)}


def refresh(cfg: PlatformConfig, model: str, pool: str) -> RefreshOutcome:
    """Rebuild the (model, pool) index if its inputs changed; publish it when its recall passes."""
    start = time.perf_counter()
    model_version = artifacts.current(registry.model_store(cfg, model))
    if model_version is None:
        log.info("ann %s x %s: skipped, model %s has no current version yet", model, pool, model)
        return RefreshOutcome(model, pool, "skipped", reason=f"model {model} has no current version")
    pool_version, pool_items = read_pool_items(cfg, pool)
    if pool_version is None:
        log.info("ann %s x %s: skipped, pool %s has no current members", model, pool, pool)
        return RefreshOutcome(model, pool, "skipped", reason=f"pool {pool} has no current members")

    store = index_store(cfg, model, pool)
    previous = artifacts.current(store)
    kept = previous.name if previous else None
    inputs = {"pool_version": pool_version, "model_version": model_version.name,
              "params": cfg.ann.model_dump(mode="json", exclude={"versions_kept", "vector_models"})}
    if previous is not None and all(previous.meta.get(k) == v for k, v in inputs.items()):
        log.info("ann %s x %s: up to date (index %s, pool %s, model %s)",
                 model, pool, kept, pool_version, model_version.name)
        return RefreshOutcome(model, pool, "up_to_date", version=kept, n_items=previous.meta["n_items"],
                              kind=previous.meta["kind"], recall=previous.meta["recall"])

    vectors = with_new_items(cfg, model, model_version, load_vectors(model_version), pool_items)
    rows = np.flatnonzero(np.isin(vectors.item_ids, pool_items))
    ids, items = vectors.item_ids[rows], vectors.item_vectors[rows]
    log.info("ann %s x %s: %d of %d pool items have a vector (pool %s, model %s; read in %.2f s)",
             model, pool, len(ids), len(pool_items), pool_version, model_version.name, time.perf_counter() - start)
    if not len(ids):
        log.warning("ann %s x %s: skipped, none of the %d pool items has a vector; the current index stays",
                    model, pool, len(pool_items))
        return RefreshOutcome(model, pool, "skipped", version=kept,
                              reason=f"none of the {len(pool_items)} pool items has a {model} vector")

    index, checked = _build_checked(cfg, items, ids, vectors.user_vectors)
    meta = {**inputs, "model": model, "pool": pool, "n_items": len(ids), "pool_items": len(pool_items), **checked}
    summary = {"n_items": len(ids), "kind": checked["kind"], "recall": checked["recall"],
               "build_seconds": checked["build_seconds"]}
    if checked["recall"] < cfg.ann.min_recall:
        _alert_low_recall(cfg, meta, kept)
        reason = f"recall@{checked['recall_k']} {checked['recall']:.4f} < {cfg.ann.min_recall}"
        return RefreshOutcome(model, pool, "rejected", reason=reason, version=kept, **summary)

    def write(folder: Path) -> dict[str, Any]:
        ann.save(index, folder / INDEX_FILE)
        np.save(folder / IDS_FILE, ids)
        return {}

    version = artifacts.publish(store, write, meta)
    pruned = artifacts.prune(store, cfg.ann.versions_kept)
    log.info("ann %s x %s: published index %s (%d items, %s, recall %.4f), pruned %d old version(s); %.2f s in all",
             model, pool, version.name, len(ids), checked["kind"], checked["recall"], len(pruned),
             time.perf_counter() - start)
    return RefreshOutcome(model, pool, "published", version=version.name, **summary)


def refresh_or_fail(cfg: PlatformConfig, model: str, pool: str) -> dict[str, Any]:
    """`refresh` for an Airflow task: the outcome as a dict, or AnnRecallRejected (after the alert)."""
    outcome = refresh(cfg, model, pool)
    if outcome.status == "rejected":
        kept = f"index {outcome.version} stays current" if outcome.version else "no index published yet"
        raise AnnRecallRejected(f"ANN index {model} x {pool}: {outcome.reason}; {kept}")
    return dataclasses.asdict(outcome)


@lru_cache(maxsize=16)
def _load_index(path: str) -> Any:
    return ann.load(Path(path))


def search(cfg: PlatformConfig, model: str, pool: str, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, scores) of the current (model, pool) index for each user vector, best first
    (-1 padded). Versions are immutable, so loaded indexes are cached by version folder."""
    version = artifacts.require_current(index_store(cfg, model, pool))
    return ann.search(_load_index(str(version.path / INDEX_FILE)), user_vectors, k)
