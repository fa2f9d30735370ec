"""Local Airflow for recpipe: the environment (AIRFLOW_HOME inside the repo, DAGs from dags/),
metadata-database setup, the project's pools, and running a DAG for a range of days."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.config import REPO_ROOT, PlatformConfig
from tasks.core.dbt_runner import build_manifest

log = logging.getLogger(__name__)
DAGS_DIR = REPO_ROOT / "dags"
PLUGINS_DIR = REPO_ROOT / "plugins"  # the recpipe UI plugin (plugins/recpipe_ui.py)
# A task's calls to the API server may wait this long (Airflow's default, 5 s, failed a task at its
# first call on a busy 2-core machine: httpx.ReadTimeout, the task marked failed before it ran).
EXECUTION_API_TIMEOUT_S = "30"


def airflow_env(home: Path | None = None) -> dict[str, str]:
    """Environment variables of a local recpipe Airflow (setdefault semantics for callers)."""
    home = home or Path(os.environ.get("AIRFLOW_HOME") or REPO_ROOT / ".airflow")
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": EXECUTION_API_TIMEOUT_S,
    }


def use_local_airflow() -> None:
    """Point this process at the local Airflow; must run before `airflow` is imported."""
    if "airflow.configuration" in sys.modules and "AIRFLOW_HOME" not in os.environ:
        raise RuntimeError("airflow was imported before the recpipe Airflow environment was set")
    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)


def setup_metadata(cfg: PlatformConfig) -> None:
    """Migrate the metadata database, create the project's pools and build the dbt manifest the
    DAGs' dbt task groups are rendered from (idempotent)."""
    use_local_airflow()
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )
    from airflow.models.pool import Pool  # lazy: airflow only after use_local_airflow set its environment
    from airflow.utils.session import create_session  # lazy: as above

    with create_session() as session:
        Pool.create_or_update_pool(
            cfg.airflow.warehouse_pool,
            slots=1,
            description="Single writer of the DuckDB warehouse (one slot, every DAG)",
            include_deferred=False,
            session=session,
        )
    build_manifest(cfg)
    log.info("Airflow metadata ready in %s; pool %s (1 slot)", os.environ["AIRFLOW_HOME"], cfg.airflow.warehouse_pool)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Leave the objects alive now out of the garbage collector's scans while the block runs, and
    give them back after (gc.freeze). Cosmos ends every dbt task with a full gc.collect(); in a
    process that has run a DAG (Airflow's in-process execution API and its models: ~1M objects)
    each such scan took ~1 s."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class DagRunFailed(RuntimeError):
    """A DAG run ended in a state other than success."""


def run_dag_for_days(dag_id: str, days: list[dt.date], conf: dict[str, Any] | None = None) -> None:
    """Run one DAG once per logical day, in the given order, in this process (`dag.test`, with
    conf {"day": <that day>} plus `conf`, the heap alive before each run frozen: _frozen_heap);
    stop on the first failed run (DagRunFailed)."""
    use_local_airflow()
    from airflow.dag_processing.dagbag import DagBag  # lazy: airflow only after use_local_airflow set its environment

    bag = DagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    for i, day in enumerate(days, 1):
        logical = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        if dag.start_date and logical < dag.start_date:  # Airflow would run no task and call it a success
            raise ValueError(f"{dag_id}: {day} is before the DAGs' start date {dag.start_date:%Y-%m-%d}; "
                             "set airflow.start_date in the config to your data's first day")
        with _frozen_heap():
            run = dag.test(logical_date=logical, run_conf={"day": day.isoformat(), **(conf or {})})
        state = str(getattr(run, "state", run))
        log.info("%s %s (%d/%d): %s", dag_id, day, i, len(days), state)
        if "success" not in state:
            raise DagRunFailed(f"{dag_id} run for {day} ended {state}; see the alerts log and task logs")
