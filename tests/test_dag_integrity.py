"""DAG integrity: every DAG file imports cleanly and quickly, has no cycles, and follows the
platform's rules (owner, retries, tags, the failure notifier, warehouse writers in the one pool)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.config import get_config
from tasks.dag_wiring import WATCHER

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
EXPECTED_DAGS = {"ingest", "daily_metrics", "content_pools", "content_pools_hourly", "kol_scoring", "implicit_follows", "ann_refresh", "nightly_training", "architecture_comparison"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    cfg = get_config()
    return DagBag(dag_folder=str(DAGS_DIR), known_pools={"default_pool", cfg.airflow.warehouse_pool})


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_fast_and_clean(path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    start = time.perf_counter()
    bag = DagBag(dag_folder=str(path))
    elapsed = time.perf_counter() - start
    assert bag.import_errors == {}
    assert bag.dags, f"{path.name} defines no DAG"
    # Far below Airflow's dagbag_import_timeout (30 s): parsing must do no data work.
    assert elapsed < 10, f"{path.name} took {elapsed:.1f}s to parse"


def test_no_dag_file_is_named_like_a_dbt_plugin() -> None:
    assert not [p.name for p in DAG_FILES if p.name.startswith("dbt_")]


def test_expected_dags_present(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert EXPECTED_DAGS <= set(dagbag.dag_ids)


def test_every_dag_follows_the_platform_rules(dagbag) -> None:
    from tasks.notifier import RecpipeNotifier

    cfg = get_config()
    for dag_id, dag in dagbag.dags.items():
        dag.check_cycle()
        assert "recpipe" in dag.tags, dag_id
        assert any(isinstance(cb, RecpipeNotifier) for cb in _callbacks(dag.on_failure_callback)), dag_id
        for task in dag.tasks:
            where = f"{dag_id}.{task.task_id}"
            assert task.owner == cfg.airflow.owner, where
            if task.task_id == WATCHER:  # its failure only restates an upstream one: no retry, no alert
                assert task.retries == 0 and not _callbacks(task.on_failure_callback), where
            else:
                assert task.retries == cfg.airflow.retries, where
                assert any(isinstance(cb, RecpipeNotifier) for cb in _callbacks(task.on_failure_callback)), where
            assert task.pool in {"default_pool", cfg.airflow.warehouse_pool}, where


def test_warehouse_writers_share_the_one_slot_pool(dagbag) -> None:
    cfg = get_config()
    publish = dagbag.dags["ingest"].get_task("publish_warehouse")
    assert publish.pool == cfg.airflow.warehouse_pool and publish.pool_slots == 1
    assert [a.name for a in publish.outlets] == ["recpipe_raw_events"]
    metrics = dagbag.dags["daily_metrics"]
    dbt_tasks = [t for t in metrics.tasks if t.task_id.startswith("dbt.")]
    assert {t.task_id for t in dbt_tasks} >= {"dbt.metrics_daily_model_build", "dbt.retention_daily_model_build", "dbt.ab_readout_model_build"}
    for t in [*dbt_tasks, metrics.get_task("write_report")]:
        assert t.pool == cfg.airflow.warehouse_pool and t.pool_slots == 1, t.task_id


def test_daily_metrics_is_scheduled_by_the_ingest_asset(dagbag) -> None:
    metrics = dagbag.dags["daily_metrics"]
    assert [a.name for a in metrics.timetable.asset_condition.objects] == ["recpipe_raw_events"]


@pytest.mark.parametrize(
    ("dag_id", "writers", "asset"),
    [
        ("kol_scoring", ["build_features", "score"], "recpipe_kol_scores"),
        ("implicit_follows", ["build", "validate"], "recpipe_implicit_follows"),
    ],
)
def test_social_dags_follow_metrics_and_write_in_the_pool(dagbag, dag_id, writers, asset) -> None:
    cfg = get_config()
    social = dagbag.dags[dag_id]
    assert [a.name for a in social.timetable.asset_condition.objects] == ["recpipe_metrics"]
    for task_id in writers:
        t = social.get_task(task_id)
        assert t.pool == cfg.airflow.warehouse_pool and t.pool_slots == 1, task_id
    assert [a.name for a in social.get_task(writers[-1]).outlets] == [asset]
    assert set(social.params.keys()) == {"day", "through"}


def test_content_pools_have_a_task_and_an_asset_per_configured_pool(dagbag) -> None:
    cfg = get_config()
    daily, hourly = dagbag.dags["content_pools"], dagbag.dags["content_pools_hourly"]
    assert [a.name for a in daily.timetable.asset_condition.objects] == ["recpipe_metrics"]
    assert hourly.schedule == cfg.schedules.pools_hourly
    for pool in cfg.pools:
        dag = daily if pool.refresh == "daily" else hourly
        publish = dag.get_task(f"publish_{pool.name}")
        assert [a.name for a in publish.outlets] == [f"recpipe_pool_{pool.name}"]
        assert publish.pool == cfg.airflow.warehouse_pool and publish.pool_slots == 1
    for dag in (daily, hourly):
        assert dag.get_task("render_candidates").pool == cfg.airflow.warehouse_pool
        assert dag.get_task("write_report").trigger_rule == "all_done"


def test_nightly_training_gates_every_configured_model_before_publishing(dagbag) -> None:
    cfg = get_config()
    dag = dagbag.dags["nightly_training"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["recpipe_metrics"]
    for model in cfg.retrieval.nightly_models:
        train, evaluate, gate, publish = (dag.get_task(f"{model}.{step}") for step in ("train", "evaluate", "gate", "publish"))
        assert evaluate.task_id in train.downstream_task_ids and gate.task_id in evaluate.downstream_task_ids
        assert publish.upstream_task_ids == {gate.task_id}
        assert [a.name for a in publish.outlets] == [f"recpipe_model_{model}"]
        assert {train.pool, evaluate.pool, gate.pool} == {cfg.airflow.warehouse_pool}
        assert {"write_report", WATCHER} <= publish.downstream_task_ids
    assert dag.get_task("write_report").trigger_rule == "all_done"
    watcher = dag.get_task(WATCHER)
    assert watcher.trigger_rule == "one_failed" and not watcher.downstream_task_ids
    assert dagbag.dags["content_pools"].get_task(WATCHER).trigger_rule == "one_failed"


def test_nightly_training_gates_the_distillation_set_before_pre_ranking(dagbag) -> None:
    cfg = get_config()
    dag = dagbag.dags["nightly_training"]
    task = {step: dag.get_task(f"ranking.{step}") for step in
            ("prepare", "score", "evaluate_full", "gate", "train_preranking", "train_full")}
    assert task["score"].upstream_task_ids >= {"ranking.prepare"} and "ranking.score" in task["gate"].upstream_task_ids
    assert "ranking.gate" in task["train_preranking"].upstream_task_ids
    assert task["train_preranking"].trigger_rule == "all_done"  # label-only after a failed gate
    assert {"ranking.score", "ranking.evaluate_full", "ranking.train_preranking"} <= task["train_full"].upstream_task_ids
    assert [a.name for a in task["train_preranking"].outlets] == ["recpipe_model_preranking"]
    assert [a.name for a in task["train_full"].outlets] == ["recpipe_model_full_ranking"]
    assert {t.pool for t in task.values()} == {cfg.airflow.warehouse_pool}
    assert WATCHER in task["train_full"].downstream_task_ids


def _callbacks(cb) -> list:
    if cb is None:
        return []
    return list(cb) if isinstance(cb, (list, tuple)) else [cb]
