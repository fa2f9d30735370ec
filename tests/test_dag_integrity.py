"""DAG integrity: every DAG file imports cleanly and quickly, has no cycles, and follows the
platform's rules (owner, retries, tags, the failure notifier, warehouse writers in the one pool,
dbt models as tasks of a Cosmos task group)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from tasks.core.config import DEFAULT_CONFIG, get_config
from tasks.core.dbt_runner import RUN_ENV, dbt_state_dir
from tasks.experiments.loop import CHAIN
from tasks.ops.notifier import RecpipeNotifier
from tasks.orchestration.wiring import WATCHER

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
EXPECTED_DAGS = {"ingest", "daily_metrics", "content_pools", "content_pools_hourly", "kol_scoring", "implicit_follows", "ann_refresh", "nightly_training", "architecture_comparison", "closed_loop"}
METRIC_MODELS = {
    "stg_events", "stg_users", "stg_items", "stg_follows", "int_user_day_activity", "int_user_day_segments",
    "int_user_day_retention", "int_ab_moments", "metrics_daily", "retention_daily", "ab_readout",
    "int_experiment_windows", "int_experiment_users", "int_experiment_arm_moments", "int_experiment_lifts",
    "experiment_readout", "experiment_weekly", "experiment_srm", "experiment_guardrails",
}
POOL_MODELS = {"int_item_hour_segment_stats", "pool_candidates"}
# dag id -> (its dbt task group, the models it renders)
DBT_GROUPS = {
    "daily_metrics": ("dbt", METRIC_MODELS),
    "content_pools": ("dbt", POOL_MODELS),
    "content_pools_hourly": ("dbt", POOL_MODELS),
    "kol_scoring": ("dbt", {"kol_features"}),
    "implicit_follows": ("dbt", {"implicit_follows"}),
    "nightly_training": ("ranking.dbt", {"ranking_exposures"}),
}


@pytest.fixture(scope="module")
def dagbag():
    cfg = get_config()
    return DagBag(dag_folder=str(DAGS_DIR), known_pools={"default_pool", cfg.airflow.warehouse_pool})


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_fast_and_clean(path: Path) -> None:
    start = time.perf_counter()
    bag = DagBag(dag_folder=str(path))
    elapsed = time.perf_counter() - start
    assert bag.import_errors == {}
    assert bag.dags, f"{path.name} defines no DAG"
    # Far below Airflow's dagbag_import_timeout (30 s): parsing must do no data work.
    assert elapsed < 10, f"{path.name} took {elapsed:.1f}s to parse"


# Libraries only a task's body may load: in a DAG file's imports they cost every parse seconds (10 s
# for nightly_training on a quiet 2-core machine, past Airflow's 30 s dagbag_import_timeout under load).
TASK_ONLY_LIBRARIES = ("torch", "faiss", "sklearn", "scipy.sparse")


PARSE_PROBE = """
import json, sys
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
libraries, out = sys.argv[1].split(","), {}
for path in sys.argv[2:]:
    before = {m for m in libraries if m in sys.modules}
    bag = DagBag(dag_folder=path)
    out[path] = [bool(bag.import_errors), sorted({m for m in libraries if m in sys.modules} - before)]
print(json.dumps(out))
"""


def test_parsing_the_dag_files_loads_no_model_library() -> None:
    """A fresh interpreter parses the files one after another as the dag-processor does (Airflow
    already imported) and names the first file that loaded each library."""
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, ",".join(TASK_ONLY_LIBRARIES), *map(str, DAG_FILES)], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(parsed) == sorted(map(str, DAG_FILES))
    assert not [p for p, (errors, _) in parsed.items() if errors]
    loaded = {Path(p).name: libraries for p, (_, libraries) in parsed.items() if libraries}
    assert loaded == {}, f"loaded at parse time (import them inside the task): {loaded}"


def test_no_dag_file_is_named_like_a_dbt_plugin() -> None:
    assert not [p.name for p in DAG_FILES if p.name.startswith("dbt_")]


def test_expected_dags_present(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert EXPECTED_DAGS <= set(dagbag.dag_ids)


def test_every_dag_follows_the_platform_rules(dagbag) -> None:
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
    report = dagbag.dags["daily_metrics"].get_task("write_report")
    assert report.pool == cfg.airflow.warehouse_pool and report.pool_slots == 1


@pytest.mark.parametrize("dag_id", sorted(DBT_GROUPS))
def test_dbt_models_and_their_tests_are_tasks_of_a_task_group(dagbag, dbt_manifest, dag_id) -> None:
    """One task per model, in the DAG's Cosmos task group, running `dbt build` of that model: the
    model, then its dbt tests (every model here has some). The group's vars and run window
    (environment) come from the task `<group>_vars`, upstream of it. No other dbt model runs in the DAG."""
    cfg = get_config()
    group, models = DBT_GROUPS[dag_id]
    dag = dagbag.dags[dag_id]
    manifest = json.loads(dbt_manifest.read_text())
    nodes = {n["name"]: (uid, n) for uid, n in manifest["nodes"].items() if n["resource_type"] == "model"}
    tested = {n["attached_node"] for n in manifest["nodes"].values() if n["resource_type"] == "test"}
    dbt_tasks = {t.task_id: t for t in dag.tasks if t.task_id.split(".")[-1].endswith("_model_build")}
    assert set(dbt_tasks) == {f"{group}.{m}_model_build" for m in models}
    for model in models:
        uid, node = nodes[model]
        task = dbt_tasks[f"{group}.{model}_model_build"]
        assert task.task_group.group_id == group and task.base_cmd == ["build"], task.task_id
        assert task.select == "fqn:" + ".".join(node["fqn"]) and uid in tested, task.task_id
        assert task.pool == cfg.airflow.warehouse_pool and task.pool_slots == 1, task.task_id
        assert task.vars == f"{{{{ ti.xcom_pull(task_ids='{group}_vars')['vars'] | tojson }}}}", task.task_id
        assert task.env[RUN_ENV] == f"{{{{ ti.xcom_pull(task_ids='{group}_vars')['run'] | tojson }}}}", task.task_id
        if not task.upstream_task_ids & set(dbt_tasks):
            assert task.upstream_task_ids == {f"{group}_vars"}, task.task_id


SELECTORS = {"daily_metrics": "metrics", "content_pools": "pools", "content_pools_hourly": "pools",
             "kol_scoring": "kol", "implicit_follows": "implicit_follows", "nightly_training": "ranking"}


def test_per_dag_dbt_runs_one_build_of_the_dags_selector(tmp_path, monkeypatch) -> None:
    """airflow.dbt_tasks per_dag: in place of the task group, one task `dbt build --selector <the
    DAG's selector>` (dbt/selectors.yml), with the same vars, run window, pool and position."""
    cfg_path = tmp_path / "per-dag.yaml"
    cfg_path.write_text(f"extends: {DEFAULT_CONFIG}\nairflow: {{dbt_tasks: per_dag}}\n")
    monkeypatch.setenv("RECPIPE_CONFIG", str(cfg_path))
    pool = get_config().airflow.warehouse_pool
    bag = DagBag(dag_folder=str(DAGS_DIR), known_pools={"default_pool", pool})
    assert bag.import_errors == {}
    for dag_id, (group, _) in DBT_GROUPS.items():
        dag = bag.dags[dag_id]
        assert not [t for t in dag.tasks if t.task_id.endswith("_model_build")], dag_id
        task = dag.get_task(group)
        assert task.base_cmd == ["build"] and task.selector == SELECTORS[dag_id], dag_id
        assert task.pool == pool and task.pool_slots == 1, dag_id
        assert task.vars == f"{{{{ ti.xcom_pull(task_ids='{group}_vars')['vars'] | tojson }}}}", dag_id
        assert task.env[RUN_ENV] == f"{{{{ ti.xcom_pull(task_ids='{group}_vars')['run'] | tojson }}}}", dag_id
        assert task.cache_dir == dbt_state_dir(get_config()), dag_id  # the warehouse's saved parse state
        assert task.upstream_task_ids == {f"{group}_vars"}, dag_id


def test_daily_metrics_is_scheduled_by_the_ingest_asset(dagbag) -> None:
    metrics = dagbag.dags["daily_metrics"]
    assert [a.name for a in metrics.timetable.asset_condition.objects] == ["recpipe_raw_events"]


def test_the_closed_loop_drives_every_dag_only_in_closed_loop_mode(dagbag, tmp_path, monkeypatch) -> None:
    assert dagbag.dags["closed_loop"].schedule is None  # organic: the DAGs keep their schedules
    assert dagbag.dags["ingest"].schedule is not None
    cfg_path = tmp_path / "loop.yaml"
    cfg_path.write_text(f"extends: {DEFAULT_CONFIG}\nsimulator: {{exposure_policy: recpipe}}\n")
    monkeypatch.setenv("RECPIPE_CONFIG", str(cfg_path))
    bag = DagBag(dag_folder=str(DAGS_DIR), known_pools={"default_pool", get_config().airflow.warehouse_pool})
    loop = bag.dags["closed_loop"]
    assert loop.schedule == "@daily" and loop.catchup and loop.max_active_runs == 1
    assert [d for d, dag in bag.dags.items() if d != "closed_loop" and dag.schedule is not None] == []
    # The chain, in order: each trigger waits for its run, and only ingest runs on warm-up days.
    chain, task = [], loop.get_task("run_ingest")
    while task is not None:
        chain.append(task.task_id)
        nxt = [loop.get_task(t) for t in task.downstream_task_ids]
        task = nxt[0] if nxt else None
    assert chain == ["run_ingest", "runs_chain", *(f"run_{d}" for d in CHAIN[1:])]
    assert all(loop.get_task(f"run_{d}").wait_for_completion for d in CHAIN)
    assert land_batch_pool(bag) == get_config().airflow.warehouse_pool  # it reads the warehouse


def land_batch_pool(bag: DagBag) -> str:
    return bag.dags["ingest"].get_task("land_batch").pool


@pytest.mark.parametrize(
    ("dag_id", "check", "model", "asset", "tag"),
    [
        ("kol_scoring", "score", "kol_features", "recpipe_kol_scores", "kol"),
        ("implicit_follows", "validate", "implicit_follows", "recpipe_implicit_follows", "u2a2i"),
    ],
)
def test_social_dags_follow_metrics_and_write_in_the_pool(dagbag, dag_id, check, model, asset, tag) -> None:
    cfg = get_config()
    social = dagbag.dags[dag_id]
    assert [a.name for a in social.timetable.asset_condition.objects] == ["recpipe_metrics"]
    t = social.get_task(check)
    assert t.pool == cfg.airflow.warehouse_pool and t.pool_slots == 1
    assert t.upstream_task_ids == {"resolve_days", f"dbt.{model}_model_build"}
    assert [a.name for a in t.outlets] == [asset]
    assert social.get_task("write_report").upstream_task_ids == {check}
    assert set(social.params.keys()) == {"day", "through", "report"}
    assert set(social.tags) == {"recpipe", "social", tag, "dbt", "gx"}


def test_content_pools_have_a_task_and_an_asset_per_configured_pool(dagbag) -> None:
    cfg = get_config()
    daily, hourly = dagbag.dags["content_pools"], dagbag.dags["content_pools_hourly"]
    assert [a.name for a in daily.timetable.asset_condition.objects] == ["recpipe_metrics"]
    assert hourly.schedule == cfg.schedules.pools_hourly
    for pool in cfg.pools:  # the daily run refreshes every pool; the hourly one the hourly pools
        for dag in [daily] + ([hourly] if pool.refresh == "hourly" else []):
            publish = dag.get_task(f"publish_{pool.name}")
            assert [a.name for a in publish.outlets] == [f"recpipe_pool_{pool.name}"]
            assert publish.pool == cfg.airflow.warehouse_pool and publish.pool_slots == 1
            assert publish.upstream_task_ids == {"refresh_window", "dbt.pool_candidates_model_build"}
    assert {f"publish_{p.name}" for p in cfg.pools} <= daily.get_task("check_every_pool_current").upstream_task_ids
    for dag in (daily, hourly):
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
    exposures = {"ranking.exposure_days", "ranking.dbt.ranking_exposures_model_build"}
    assert task["prepare"].upstream_task_ids >= exposures
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
