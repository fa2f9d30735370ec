"""What every recpipe DAG shares: default args, the failure notifier, tags, the Assets through
which DAGs hand data to each other, the dbt task group, and the social DAGs' whole shape (so a DAG
file stays thin wiring)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow.sdk import (
    DAG,
    Asset,
    BaseOperator,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    XComArg,
    dag,
    task,
)
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior
from cosmos.operators.local import DbtBuildLocalOperator

from tasks.core import dbt_runner
from tasks.core.config import PlatformConfig
from tasks.core.days import resolve_days
from tasks.experiments.loop import is_closed_loop
from tasks.ops.alerts import DataQualityRejected
from tasks.ops.notifier import RecpipeNotifier

RAW_EVENTS = Asset(name="recpipe_raw_events", uri="x-recpipe://warehouse/raw/events", group="recpipe")
# daily_metrics announces the days it rebuilt: extra {"ds_from": first, "ds": last}.
METRICS = Asset(name="recpipe_metrics", uri="x-recpipe://warehouse/marts/metrics", group="recpipe")
KOL_SCORES = Asset(name="recpipe_kol_scores", uri="x-recpipe://warehouse/social/kol_scores", group="recpipe")
IMPLICIT_FOLLOWS = Asset(
    name="recpipe_implicit_follows", uri="x-recpipe://warehouse/social/implicit_follows", group="recpipe"
)
# ann_refresh announces each (model, pool) index it checked (extra: the outcome).
ANN_INDEXES = Asset(name="recpipe_ann_indexes", uri="x-recpipe://artifacts/ann", group="recpipe")
# feeds announces the next day's feeds once published (extra: day, version).
FEEDS = Asset(name="recpipe_feeds", uri="x-recpipe://artifacts/feeds", group="recpipe")


def model_asset(model: str) -> Asset:
    """The Asset nightly_training emits when a new version of a model becomes current (extra: version)."""
    return Asset(name=f"recpipe_model_{model}", uri=f"x-recpipe://artifacts/models/{model}", group="recpipe")


def pool_asset(pool: str) -> Asset:
    """The Asset a content pool's refresh emits when a new version is published (extra: version)."""
    return Asset(name=f"recpipe_pool_{pool}", uri=f"x-recpipe://warehouse/pools/{pool}", group="recpipe")


def fail_fast_policy() -> ExceptionRetryPolicy:
    """Airflow's retry policy for recpipe tasks: a data-quality rejection (DataQualityRejected,
    raised by a gate after its alert) fails the task at once, as AirflowFailException would;
    any other error keeps the task's retries (a transient failure may pass on the next try)."""
    return ExceptionRetryPolicy(rules=[RetryRule(
        exception=DataQualityRejected, action=RetryAction.FAIL,
        reason="data-quality rejection: deterministic, a retry would only repeat it and its alert",
    )])


def default_args(cfg: PlatformConfig) -> dict[str, Any]:
    """Owner, retries (none for a data-quality rejection: fail_fast_policy) and the failure alert
    for every task of every recpipe DAG."""
    return {
        "owner": cfg.airflow.owner,
        "retries": cfg.airflow.retries,
        "retry_delay": dt.timedelta(minutes=5),
        "retry_policy": fail_fast_policy(),
        "on_failure_callback": RecpipeNotifier(),
    }


def dag_kwargs(cfg: PlatformConfig, *, schedule: Any, tags: list[str]) -> dict[str, Any]:
    """Keyword arguments common to every recpipe @dag. In the closed loop the closed_loop DAG
    triggers every other DAG once per simulated day: their own schedules are off."""
    return {
        "schedule": None if is_closed_loop(cfg) else schedule,
        "start_date": dt.datetime.combine(cfg.airflow.start_date or cfg.simulator.start_date, dt.time(), tzinfo=dt.timezone.utc),
        "catchup": False,
        "default_args": default_args(cfg),
        "on_failure_callback": RecpipeNotifier(title="Airflow DAG run failed"),
        "tags": ["recpipe", *tags],
    }


def writer_task_kwargs(cfg: PlatformConfig) -> dict[str, Any]:
    """Task arguments of every task that writes the DuckDB warehouse: the one-slot pool."""
    return {"pool": cfg.airflow.warehouse_pool, "pool_slots": 1}


WATCHER = "fail_run_if_any_failed"


def report_whatever_happens(cfg: PlatformConfig, upstream: list[Any]) -> None:
    """End a DAG with the report, written whatever `upstream` did (trigger rule all_done), and a
    watcher (Airflow's watcher pattern): the report is a leaf that succeeds, so without a leaf
    that fails the run would look successful after a rejected version. The watcher runs, and
    fails, only when an upstream task failed; otherwise it is skipped. Its failure raises no
    extra alert (the failed task and the run already did)."""

    @task(task_id=WATCHER, trigger_rule="one_failed", retries=0, on_failure_callback=None)
    def watcher() -> None:
        raise RuntimeError("an upstream task failed (see its alert): this run is marked failed")

    upstream >> write_report_task(cfg, trigger_rule="all_done")
    upstream >> watcher()


def write_report_task(cfg: PlatformConfig, **task_kwargs: Any) -> Any:
    """The last task of a DAG whose tables the nightly report draws: rewrite the report. In the
    writer pool: DuckDB refuses a reader while another process writes."""

    @task(task_id="write_report", **writer_task_kwargs(cfg), **task_kwargs)
    def write_report(params=None) -> str:
        return rewrite_report(cfg, params)

    return write_report()


def rewrite_report(cfg: PlatformConfig, params: dict[str, Any] | None) -> str:
    """Rewrite the report (the path of its page), unless the run's params say `report: false`: the
    closed loop runs a day's DAGs one after another and leaves the report to the last of them
    (tasks/experiments/loop.py `REPORT_LEFT`)."""
    if params and params.get("report") is False:
        return "report not rewritten: this run's conf has report: false (a later DAG of the day writes it)"
    from tasks.reports.page import write_report  # lazy: altair + vl-convert, ~1.5 s, kept out of DAG parsing

    return str(write_report(cfg))


def day_range_params(verb: str) -> dict[str, Param]:
    """Params of a DAG run for a day or a range of days (UI: Trigger with config)."""
    return {
        "day": Param(None, type=["null", "string"], format="date", description=f"first day to {verb}"),
        "through": Param(None, type=["null", "string"], format="date", description="last day (default: day)"),
        "report": Param(True, type="boolean", description="rewrite the report at the end (the closed loop: only "
                                                          "the day's last DAG does)"),
    }


def resolve_days_task() -> Any:
    """The first task of a day-range DAG: {"ds_from", "ds"} from its params, the triggering asset
    events, or the logical date (tasks.core.days.resolve_days)."""

    @task(task_id="resolve_days")
    def days_of_run(params=None, triggering_asset_events=None, logical_date=None) -> dict[str, str]:
        return resolve_days(params, triggering_asset_events, logical_date)

    return days_of_run()


def dbt_task_group(cfg: PlatformConfig, group_id: str, *, selector: str, window: XComArg) -> DbtTaskGroup | BaseOperator:
    """The models of YAML selector `selector` (dbt/selectors.yml), in the warehouse-writer pool, in
    this process (dbtRunner). With airflow.dbt_tasks `per_model`: a Cosmos task group rendered from
    the prebuilt manifest (dbt_runner.build_manifest), one task per model running `dbt build` (the
    model, then its tests); with `per_dag`: one task `<group_id>` running `dbt build --selector`.
    `window` is a task's output holding the run's dbt_runner.run_window arguments ({"ds_from", "ds"},
    for pools also "as_of" and "pools"); the task `<group_id>_vars` turns it into the config's dbt
    vars and the run's window, which the dbt tasks get as --vars and in the environment
    (dbt_runner.RUN_ENV), templated: see them under Rendered Template. The vars are the same on
    every run of a config, so dbt's saved parse state stays valid and a dbt task skips the full parse."""

    @task(task_id=f"{group_id}_vars")
    def dbt_vars(window: dict[str, Any]) -> dict[str, Any]:
        return {"vars": dbt_runner.dbt_vars(cfg), "run": dbt_runner.run_window(cfg, **window)}

    run_vars = dbt_vars(window)
    pulled = f"ti.xcom_pull(task_ids='{run_vars.operator.task_id}')"
    profile_config = ProfileConfig(
        profile_name=dbt_runner.PROFILE, target_name=cfg.warehouse.engine, profiles_yml_filepath=dbt_runner.PROFILES_PATH
    )
    operator_args = {
        # One JSON document each (dbt reads --vars as YAML, which JSON is): a list stays a list,
        # where a templated dict value would render as a string.
        "vars": f"{{{{ {pulled}['vars'] | tojson }}}}",
        "append_env": True,
        **writer_task_kwargs(cfg),
        # spark: the warehouse's views move to the models the task built (tasks/core/dbt_runner.py)
        **({"callback": dbt_runner.spark_views_callback} if cfg.warehouse.engine == "spark" else {}),
    }
    env = {**dbt_runner.dbt_env(cfg), dbt_runner.RUN_ENV: f"{{{{ {pulled}['run'] | tojson }}}}"}
    if cfg.airflow.dbt_tasks == "per_dag":
        built = DbtBuildLocalOperator(
            task_id=group_id,
            project_dir=str(dbt_runner.DBT_DIR),
            profile_config=profile_config,
            selector=selector,
            env=env,
            invocation_mode=InvocationMode.DBT_RUNNER,
            install_deps=False,
            # dbt's saved parse state: the warehouse's, which run_dbt keeps too (a task group's
            # tasks share Cosmos's own cache folder)
            cache_dir=dbt_runner.dbt_state_dir(cfg),
            **operator_args,
        )
    else:
        built = DbtTaskGroup(
            group_id=group_id,
            project_config=ProjectConfig(
                dbt_project_path=dbt_runner.DBT_DIR,
                manifest_path=dbt_runner.MANIFEST_PATH,
                env_vars=env,
                install_dbt_deps=False,
            ),
            profile_config=profile_config,
            # dbt in the task's process (profiles.yml: keep_open false, so the file is released after it).
            execution_config=ExecutionConfig(invocation_mode=InvocationMode.DBT_RUNNER),
            render_config=RenderConfig(
                load_method=LoadMode.DBT_MANIFEST,
                test_behavior=TestBehavior.BUILD,
                select=dbt_runner.selection(selector),
            ),
            operator_args=operator_args,
        )
    run_vars >> built
    return built


@dataclass(frozen=True)
class SocialDag:
    """What tells one social DAG (after daily_metrics: dbt model -> a GX-checked step -> Asset ->
    report) from another."""

    dag_id: str
    description: str
    tag: str  # besides social, dbt and gx
    selector: str  # dbt/selectors.yml
    check_task_id: str
    check: Callable[[PlatformConfig, str, str], list[dict[str, Any]]]  # (cfg, ds_from, ds) -> a summary per day
    asset: Asset  # emitted with the days as extra once every day passed
    verb: str  # day_range_params


def social_dag(cfg: PlatformConfig, spec: SocialDag, doc_md: str) -> DAG:
    """A social DAG: on the recpipe_metrics Asset (or by hand for a day or a range), its dbt model
    for the days, then `spec.check` over them (in the writer pool: a reader too, and DuckDB refuses
    a reader while another process writes), emitting `spec.asset`, then the report."""

    @dag(
        dag_id=spec.dag_id,
        description=spec.description,
        max_active_runs=1,
        doc_md=doc_md,
        params=day_range_params(spec.verb),
        **dag_kwargs(cfg, schedule=[METRICS], tags=["social", spec.tag, "dbt", "gx"]),
    )
    def social() -> None:
        days = resolve_days_task()
        built = dbt_task_group(cfg, "dbt", selector=spec.selector, window=days)

        @task(task_id=spec.check_task_id, outlets=[spec.asset], **writer_task_kwargs(cfg))
        def check(days: dict[str, str], outlet_events=None) -> list[dict[str, Any]]:
            summaries = spec.check(cfg, days["ds_from"], days["ds"])
            outlet_events[spec.asset].extra = days
            return summaries

        built >> check(days) >> write_report_task(cfg)

    return social()
