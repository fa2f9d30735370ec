"""ANN indexes (models/retrieval/ann.py) and their refresh per (model, pool) (tasks/retrieval/ann_refresh.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest

from models.retrieval import ann
from tasks.core import artifacts, registry
from tasks.core.config import AnnConfig, PlatformConfig, load_config
from tasks.ops.alerts import read_alerts
from tasks.retrieval import ann_refresh
from tests.conftest import write_config

DIM = 16
MODEL = "two_tower"
POOL = "pool_30d"
# Approximate indexes even for the few thousand items of these tests.
HNSW = {"exact_below": 100, "kind": "hnsw", "hnsw_m": 16, "ef_construction": 64, "ef_search": 128}
IVF_NPROBE_1 = {"exact_below": 100, "kind": "ivf", "ivf_nlist": 64, "ivf_nprobe": 1}


def _normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random(n: int, dim: int, seed: int) -> np.ndarray:
    return _normalised(np.random.default_rng(seed).standard_normal((n, dim)))


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) * 3
    return _normalised(centres[rng.integers(clusters, size=n)] + rng.standard_normal((n, dim)))


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def _config(tmp_path: Path, name: str, **ann_overrides) -> PlatformConfig:
    """A config over the shared data root tmp_path/data, with `ann:` overridden."""
    return load_config(write_config(tmp_path / f"{name}.yaml", tmp_path / "data", ann=ann_overrides))


def _publish_model(cfg: PlatformConfig, seed: int, n_items: int = 3000, n_users: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A fake two-tower version (clustered vectors); returns (item ids, item vectors)."""
    item_ids = np.arange(10_000, 10_000 + n_items, dtype=np.int64)[::-1].copy()  # not sorted on purpose
    items = _clustered(n_items, DIM, 30, seed)
    users = _clustered(n_users, DIM, 30, seed + 1)

    def write(folder: Path) -> dict:
        np.save(folder / "item_ids.npy", item_ids)
        np.save(folder / "item_vectors.npy", items)
        np.save(folder / "user_ids.npy", np.arange(n_users, dtype=np.int64))
        np.save(folder / "user_vectors.npy", users)
        return {}

    artifacts.publish(registry.model_store(cfg, MODEL), write, {"model": MODEL})
    return item_ids, items


def _write_pool(cfg: PlatformConfig, version: str, item_ids: np.ndarray) -> None:
    """A warehouse whose pool_current_members holds POOL (two overlapping segments) and another pool."""
    cfg.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(cfg.warehouse_path)) as con:
        con.execute(
            "create or replace table pool_current_members (pool varchar, version varchar, segment varchar, "
            "item_id bigint, score double, rank bigint, added_at timestamp)"
        )
        half = len(item_ids) // 2
        for segment, ids in (("all", item_ids[:half + 10]), ("new_users", item_ids[half - 10:])):
            con.execute(
                "insert into pool_current_members select ?, ?, ?, unnest(?), 0.5, unnest(range(?)), now()",
                [POOL, version, segment, ids.tolist(), len(ids)],
            )
        con.execute("insert into pool_current_members values ('pool_1d', 'x', 'all', 10001, 0.5, 0, now())")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PlatformConfig, np.ndarray]:
    """An HNSW config, a model version and a pool of 1,500 of its items plus 100 without vectors;
    returns the config and the pool's item ids that have vectors."""
    cfg = _config(tmp_path, "hnsw", **HNSW)
    item_ids, _ = _publish_model(cfg, seed=1)
    pool_ids = np.sort(item_ids[::2])
    _write_pool(cfg, "20260130T0000", np.concatenate([pool_ids, np.arange(100, dtype=np.int64)]))
    return cfg, pool_ids


def test_exact_index_returns_the_brute_force_top_k() -> None:
    vectors, queries = _random(2000, DIM, 0), _random(50, DIM, 1)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    index = ann.build_index(vectors, ids, AnnConfig())
    assert ann.kind_of(index) == "flat"
    found, scores = ann.search(index, queries, 10)
    truth = _brute_force(vectors, queries, 10)
    np.testing.assert_array_equal(found, ids[truth])
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, truth, axis=1), rtol=1e-5)


def test_hnsw_reaches_recall_095_at_100_on_50k_random_vectors() -> None:
    vectors, queries = _random(50_000, 32, 2), _random(200, 32, 3)
    cfg = AnnConfig(exact_below=20_000, kind="hnsw", hnsw_m=32, ef_construction=40, ef_search=256)
    index = ann.build_index(vectors, np.arange(50_000), cfg)
    assert ann.kind_of(index) == "hnsw"
    found, _ = ann.search(index, queries, 100)
    truth = _brute_force(vectors, queries, 100)
    recall = np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth)])
    assert recall >= 0.95
    assert ann.recall_at_k(index, ann.exact_index(vectors, np.arange(50_000)), queries, 100) == pytest.approx(recall, abs=0.005)


def test_hnsw_search_explores_at_least_k_when_k_exceeds_ef_search() -> None:
    """With k > efSearch, faiss alone returns k ids of which many are not among the k nearest; the
    search raises efSearch to k for the call, so the ids are (almost) the exact top k."""
    vectors, queries = _random(25_000, 16, 4), _random(20, 16, 5)
    cfg = AnnConfig(exact_below=20_000, kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=16)
    index = ann.build_index(vectors, np.arange(25_000), cfg)
    found, _ = ann.search(index, queries, 300)
    truth = _brute_force(vectors, queries, 300)
    assert np.mean([len(np.intersect1d(f, t)) / 300 for f, t in zip(found, truth)]) >= 0.95
    assert faiss.downcast_index(index.index).hnsw.efSearch == 16  # the stored setting is untouched


def test_ivf_index_round_trips_through_a_file(tmp_path: Path) -> None:
    vectors = _clustered(5000, DIM, 20, 4)
    index = ann.build_index(vectors, np.arange(5000), AnnConfig(exact_below=100, kind="ivf", ivf_nlist=1024, ivf_nprobe=8))
    ann.save(index, tmp_path / "i.faiss")
    loaded = ann.load(tmp_path / "i.faiss")
    base = faiss.downcast_index(loaded.index)
    assert ann.kind_of(loaded) == "ivf" and base.nlist == 5000 // ann.MIN_POINTS_PER_CENTROID and base.nprobe == 8
    np.testing.assert_array_equal(ann.search(loaded, vectors[:5], 10)[0], ann.search(index, vectors[:5], 10)[0])


def test_refresh_publishes_an_index_of_the_pools_items(setup) -> None:
    cfg, pool_ids = setup
    outcome = ann_refresh.refresh(cfg, MODEL, POOL)
    assert outcome.status == "published" and outcome.kind == "hnsw" and outcome.recall >= cfg.ann.min_recall
    version = artifacts.require_current(ann_refresh.index_store(cfg, MODEL, POOL))
    indexed = np.load(version.path / ann_refresh.IDS_FILE)
    np.testing.assert_array_equal(np.sort(indexed), pool_ids)  # not the 100 pool items without vectors
    model_version = artifacts.require_current(registry.model_store(cfg, MODEL))
    assert version.meta | {"n_items": 1500, "pool_items": 1600, "kind": "hnsw", "pool_version": "20260130T0000",
                           "model_version": model_version.name, "recall_k": 100, "queries": 400} == version.meta
    assert version.meta["build_seconds"] >= 0

    vectors = ann_refresh.load_vectors(model_version)
    users = vectors.user_vectors[:20]
    found, scores = ann_refresh.search(cfg, MODEL, POOL, users, 10)
    assert np.isin(found, pool_ids).all()
    in_pool = np.isin(vectors.item_ids, pool_ids)
    exact = ann.exact_index(vectors.item_vectors[in_pool], vectors.item_ids[in_pool])
    assert ann.recall_at_k(exact, exact, users, 10) == 1.0
    np.testing.assert_allclose(scores[:, 0], ann.search(exact, users, 1)[1][:, 0], rtol=1e-5)

    assert ann_refresh.refresh(cfg, MODEL, POOL).status == "up_to_date"


def test_refresh_rebuilds_on_a_new_model_version_and_prunes(setup) -> None:
    cfg, _ = setup
    published = []
    for seed in range(cfg.ann.versions_kept + 1):
        if seed:
            _publish_model(cfg, seed=10 + seed)
        published.append(ann_refresh.refresh(cfg, MODEL, POOL).version)
    store = ann_refresh.index_store(cfg, MODEL, POOL)
    assert [v.name for v in artifacts.list_versions(store)] == published[1:]
    assert artifacts.require_current(store).name == published[-1]


def test_refresh_skips_a_model_without_versions(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "empty")
    outcome = ann_refresh.refresh(cfg, MODEL, POOL)
    assert outcome.status == "skipped" and "no current version" in outcome.reason
    assert not ann_refresh.index_store(cfg, MODEL, POOL).exists()


def test_low_recall_alerts_and_keeps_the_previous_index(setup, tmp_path: Path) -> None:
    cfg, _ = setup
    first = ann_refresh.refresh(cfg, MODEL, POOL)
    strict = _config(tmp_path, "nprobe1", **IVF_NPROBE_1)

    outcome = ann_refresh.refresh(strict, MODEL, POOL)
    assert outcome.status == "rejected" and outcome.kind == "ivf" and outcome.recall < 0.95
    assert outcome.version == first.version
    store = ann_refresh.index_store(cfg, MODEL, POOL)
    assert artifacts.require_current(store).name == first.version
    assert [v.name for v in artifacts.list_versions(store)] == [first.version]
    alert = read_alerts(strict)[-1]
    assert alert["kind"] == "data_quality" and alert["source"] == f"ann_refresh.index_{MODEL}__{POOL}"
    assert alert["details"] | {"model": MODEL, "pool": POOL, "kind": "ivf"} == alert["details"]
    assert alert["details"]["recall"] == pytest.approx(outcome.recall)

    with pytest.raises(ann_refresh.AnnRecallRejected, match="recall@100"):
        ann_refresh.refresh_or_fail(strict, MODEL, POOL)
    assert artifacts.require_current(store).name == first.version


def test_a_publish_interrupted_while_writing_keeps_the_previous_index(setup, monkeypatch) -> None:
    cfg, _ = setup
    first = ann_refresh.refresh(cfg, MODEL, POOL)
    _publish_model(cfg, seed=5)

    def write_half_then_fail(index, path: str) -> None:
        Path(path).write_bytes(b"\0" * 4096)
        raise OSError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        ann_refresh.refresh(cfg, MODEL, POOL)
    store = ann_refresh.index_store(cfg, MODEL, POOL)
    assert artifacts.require_current(store).name == first.version
    assert [p.name for p in (store / "versions").iterdir()] == [first.version]  # no staging folder left


def test_dag_runs_one_pooled_task_per_model_and_pool_on_any_new_version() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tasks.core.config import get_config

    cfg = get_config()
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags" / "ann_refresh.py"))
    assert bag.import_errors == {}
    dag = bag.dags["ann_refresh"]
    triggers = {a.name for a in dag.timetable.asset_condition.objects}
    assert triggers == {f"recpipe_pool_{p.name}" for p in cfg.pools} | {"recpipe_model_two_tower"}
    assert type(dag.timetable.asset_condition).__name__ == "AssetAny"
    assert {t.task_id for t in dag.tasks} == {f"index_two_tower__{p.name}" for p in cfg.pools}
    assert {(t.pool, t.pool_slots) for t in dag.tasks} == {(cfg.airflow.warehouse_pool, 1)}
