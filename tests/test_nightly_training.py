"""nightly_training (docs/METHODS.md "Nightly retrieval gate and publish") run with dag.test() on a simulation: candidates trained
through the day before, evaluated against the current version and popularity, gated by GX and
published by switching the registry pointer; a re-run changes nothing; a candidate that loses
recall is rejected with a data-quality alert and the previous version stays current, so is a planted
two-tower regression (item vectors shuffled over the ids). Also: a stored neighbour table served
over a later catalogue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig, load_config
from tasks.core.warehouse import connect
from tasks.ops.alerts import read_alerts
from tasks.retrieval.data import connect_read, load_catalogue
from tasks.retrieval.i2i import load_table
from tasks.retrieval.i2i import train as train_i2i
from tasks.retrieval.nightly import ModelRejected, evaluate_candidate, gate
from tests.conftest import config_variant

pytestmark = pytest.mark.slow
MODELS = ("two_tower", "itemcf", "swing")


@pytest.fixture(scope="module")
def nights(retrieval_sim: Path) -> Iterator[tuple[PlatformConfig, Path, list[dt.date]]]:
    """Config (own artifact store), its path, and the evaluation days 13 and 14 run by the DAG."""
    # the ranking group: tests/test_nightly_ranking.py
    path = config_variant(retrieval_sim, "nightly", ranking={"nightly": False})
    cfg = load_config(path)
    days = [cfg.simulator.start_date + dt.timedelta(days=n) for n in (12, 13)]
    with pytest.MonkeyPatch.context() as mp:  # the DAG is parsed with this config
        mp.setenv("RECPIPE_CONFIG", str(path))
        mp.delenv("RECPIPE_DATA_DIR", raising=False)
        from tasks.orchestration.local_airflow import run_dag_for_days, setup_metadata

        setup_metadata(cfg)
        for day in days:
            run_dag_for_days("nightly_training", [day])
        yield cfg, path, days


def _gates(cfg: PlatformConfig) -> list[tuple]:
    with connect(cfg, read_only=True) as con:
        return con.execute(
            "select day, model, candidate, current, passed from model_gate order by day, model, checked_at"
        ).fetchall()


def test_each_night_publishes_a_gated_version_trained_through_the_day_before(nights) -> None:
    cfg, _, days = nights
    gates = _gates(cfg)
    assert [(g[0], g[1]) for g in gates] == [(d - dt.timedelta(days=1), m) for d in days for m in sorted(MODELS)]
    assert all(g[4] for g in gates)
    for model in MODELS:
        store = registry.model_store(cfg, model)
        versions, current = artifacts.list_versions(store), artifacts.require_current(store)
        assert len(versions) == 2 and current.name == versions[-1].name
        assert current.meta["training_window"].endswith(str(days[-1] - dt.timedelta(days=1)))
        assert current.meta["evaluation"]["passed"] and current.meta["evaluation"]["current_recall"] is not None
        second_night = [g for g in gates if g[1] == model][-1]
        assert second_night[2] == current.name and second_night[3] == versions[0].name
    with connect(cfg, read_only=True) as con:
        paired = con.execute("select current, drop_ci_low, recall_drop, drop_ci_high, n_users, gate_reason from model_gate "
                             "order by day, model").df()
    first, second = paired.iloc[: len(MODELS)], paired.iloc[len(MODELS):]
    assert first.current.isna().all() and first.drop_ci_low.isna().all() and first.gate_reason.str.startswith("first").all()
    assert (second.drop_ci_low <= second.recall_drop).all() and (second.recall_drop <= second.drop_ci_high).all()
    assert (second.drop_ci_low <= cfg.evaluation.max_recall_drop).all() and (second.n_users > 0).all()


def test_the_aged_two_tower_warm_starts_from_the_previous_version(nights) -> None:
    cfg, _, days = nights
    first, second = artifacts.list_versions(registry.model_store(cfg, "two_tower"))
    assert first.meta["warm_started_from"] is None and first.meta["epochs"] == cfg.retrieval.two_tower.first_epochs
    assert second.meta["warm_started_from"] == first.name and second.meta["epochs"] == 1
    assert second.meta["training_window"] == f"{days[1] - dt.timedelta(days=1)}..{days[1] - dt.timedelta(days=1)}"


def test_evaluation_rows_hold_candidate_current_and_popularity(nights) -> None:
    cfg, _, days = nights
    day = days[-1] - dt.timedelta(days=1)
    with connect(cfg, read_only=True) as con:
        rows = con.execute(
            "select channel, version from retrieval_eval where day = ? and segment = 'all' and k = 50 and metric = 'recall'",
            [day],
        ).fetchall()
    for model in MODELS:
        versions = [v.name for v in artifacts.list_versions(registry.model_store(cfg, model))]
        assert {(model, v) for v in versions} <= set(rows)
    assert ("popularity", "") in rows


def test_a_rerun_of_a_night_changes_nothing(nights) -> None:
    from tasks.orchestration.local_airflow import run_dag_for_days

    cfg, _, days = nights
    before = {m: [v.name for v in artifacts.list_versions(registry.model_store(cfg, m))] for m in MODELS}
    gates = _gates(cfg)
    run_dag_for_days("nightly_training", [days[-1]])
    assert {m: [v.name for v in artifacts.list_versions(registry.model_store(cfg, m))] for m in MODELS} == before
    assert len(_gates(cfg)) == len(gates)


def test_a_candidate_losing_recall_is_rejected_and_alerted(nights) -> None:
    """A night whose ItemCF keeps 1 neighbour per item (a misconfiguration) with no recall drop
    allowed: the gate fails, an alert names the failed expectation, the previous version stays
    current and the rejected one is kept for inspection."""
    from tasks.orchestration.local_airflow import run_dag_for_days

    cfg, path, days = nights
    raw = yaml.safe_load(path.read_text())  # the same artifact store
    raw["retrieval"]["itemcf"]["top_k"] = 1
    raw["retrieval"]["nightly_models"] = ["itemcf"]
    raw["evaluation"]["max_recall_drop"] = 0.0
    bad = path.parent / "nightly-bad.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    store = registry.model_store(cfg, "itemcf")
    before = artifacts.require_current(store)
    night = days[-1] + dt.timedelta(days=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECPIPE_CONFIG", str(bad))
        with pytest.raises(RuntimeError, match="nightly_training run for .* ended"):
            run_dag_for_days("nightly_training", [night])
    assert artifacts.require_current(store).name == before.name
    rejected = artifacts.list_versions(store)[-1]
    assert rejected.name != before.name and rejected.meta["evaluation"]["passed"] is False
    alert = [a for a in read_alerts(cfg) if a["source"] == "nightly_training.gate"][-1]
    assert alert["kind"] == "data_quality" and rejected.name in alert["title"]
    assert any("expect_column_pair_values_a_to_be_greater_than_b" in f and "recall_floor" in f
               for f in alert["details"]["failed_expectations"])
    assert alert["details"]["drop_ci_low"] > 0
    assert alert["details"]["summary"].endswith("drop beyond noise and above max_recall_drop 0.0%")
    last = _gates(cfg)[-1]
    assert last[1:] == ("itemcf", rejected.name, before.name, False)


def test_a_stored_table_serves_a_later_catalogue(retrieval_sim: Path, tmp_path: Path) -> None:
    """Neighbours are stored as item ids: over a later catalogue, rows of items the version never
    saw are empty and every neighbour maps to the same item id as when it was trained."""
    cfg = load_config(config_variant(retrieval_sim, "later-catalogue", tmp_path))
    day = cfg.simulator.start_date + dt.timedelta(days=5)
    version = train_i2i(cfg, "itemcf", day, make_current=True)
    with connect_read(cfg) as con:
        later = load_catalogue(con, day + dt.timedelta(days=7))
    table = load_table(version, later)
    ids, stored = np.load(version.path / "item_ids.npy"), np.load(version.path / "neighbours.npy")
    assert len(later) > len(ids)
    new = ~np.isin(later.item_id, ids)
    assert (table.neighbours[new] == -1).all()
    rows = np.searchsorted(ids, later.item_id[~new])
    mapped = np.where(table.neighbours[~new] >= 0, later.item_id[table.neighbours[~new]], -1)
    np.testing.assert_array_equal(mapped, stored[rows])


def test_items_published_after_training_get_item_tower_vectors_for_the_ann(nights) -> None:
    """A fresh pool holds items the current two-tower never saw: the index refresh encodes them
    from their author, categories and cluster instead of leaving them out."""
    from tasks.retrieval.ann_refresh import load_vectors, with_new_items

    cfg, _, days = nights
    version = artifacts.require_current(registry.model_store(cfg, "two_tower"))
    vectors = load_vectors(version)
    with connect_read(cfg) as con:
        later = load_catalogue(con, days[-1] + dt.timedelta(days=1))
    new = later.item_id[~np.isin(later.item_id, vectors.item_ids)]
    assert len(new)
    pool = np.r_[vectors.item_ids[:5], new, -1]  # -1: not in the catalogue either
    got = with_new_items(cfg, "two_tower", version, vectors, pool)
    assert set(new) <= set(got.item_ids) and -1 not in got.item_ids
    assert np.all(np.diff(got.item_ids) > 0) and len(got.item_ids) == len(vectors.item_ids) + len(new)
    np.testing.assert_allclose(np.linalg.norm(got.item_vectors, axis=1), 1, atol=1e-5)
    old = np.searchsorted(got.item_ids, vectors.item_ids)
    np.testing.assert_array_equal(got.item_vectors[old], vectors.item_vectors)


def test_a_planted_two_tower_regression_is_rejected(nights) -> None:
    """The current two-tower with its exported item vectors shuffled over the item ids (each id gets
    another item's vector), gated against that current version: rejected beyond noise."""
    cfg, _, days = nights
    store = registry.model_store(cfg, "two_tower")
    current = artifacts.require_current(store)

    def shuffled(folder: Path) -> dict:
        for f in current.path.iterdir():
            if f.name != "meta.json":
                (folder / f.name).write_bytes(f.read_bytes())
        vectors = np.load(folder / "item_vectors.npy")
        np.save(folder / "item_vectors.npy", np.random.default_rng(0).permutation(vectors))
        return {"planted": "ids_shuffled"}

    planted = artifacts.publish(store, shuffled, current.meta, make_current=False).name
    evaluate_candidate(cfg, "two_tower", planted, days[-1])
    with pytest.raises(ModelRejected, match="drop beyond noise and above max_recall_drop"):
        gate(cfg, "two_tower", planted, days[-1])
    assert artifacts.require_current(store).name == current.name
    evaluation = artifacts.load(store, planted).meta["evaluation"]
    assert evaluation["drop_ci_low"] > cfg.evaluation.max_recall_drop and evaluation["passed"] is False
