"""The dbt project (dbt/): where it is, what each job selects (dbt/selectors.yml), the environment
and vars a run gets from the platform config, the manifest the DAGs' dbt task groups are rendered
from, and running dbt in this process (the `recpipe` commands and tests that call the task
functions directly).

dbt runs in-process through dbtRunner (a dbt subprocess spends ~3 s importing before it starts;
measured here: 7.1 s per `dbt run` as a subprocess, 1.7 s in-process after the first). The
profile sets `keep_open: false`, so the DuckDB file is closed when an invocation ends and the
process can open the warehouse again (read-only) right after.

The target is the config's `warehouse.engine` (docs/SCALE.md "dbt on Spark"). On `spark` a run
also gets var spark_sources (the lake and its tables' columns, from the contract), from which the
project's on-run-start creates the Spark sources, and first copies the DuckDB tables of source
`experiments` to Parquet for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import ALL, REPO_ROOT, PlatformConfig, get_config
from tasks.core.contract import TABLES
from tasks.core.storage import dbt_filesystems
from tasks.core.warehouse import connect, duckdb_settings, table_names

log = logging.getLogger(__name__)
DBT_DIR = REPO_ROOT / "dbt"
PROFILES_PATH = DBT_DIR / "profiles.yml"
MANIFEST_PATH = DBT_DIR / "target" / "manifest.json"
PARSE_STATE = "partial_parse.msgpack"  # dbt's saved parse state, beside the manifest
PROFILE = "recpipe"  # dbt/profiles.yml
RUN_ENV = "RECPIPE_DBT_RUN"  # a run's window (run_window, JSON), read by dbt macro run_var
SELECTORS_PATH = DBT_DIR / "selectors.yml"
SPARK_TYPES = {"BIGINT": "bigint", "INTEGER": "int", "VARCHAR": "string", "TIMESTAMP": "timestamp"}
# The warehouse tables of dbt source `experiments` (tasks/experiments/assignment.py writes them).
SPARK_EXPORTS = ("experiments", "experiment_assignments")


class DbtError(RuntimeError):
    """A dbt command failed; the message carries dbt's own error lines."""


def selection(selector: str) -> list[str]:
    """The criteria of YAML selector `selector` (dbt/selectors.yml: `method`/`value` criteria, alone
    or in a `union`) as select arguments (["path:models/pools"]): what a Cosmos task group renders.
    Cosmos's own `selector` option, with a manifest, caches the parsed selectors in an Airflow
    Variable while the DAG is parsed (parse code may not touch the metadata DB)."""
    selectors = {s["name"]: s["definition"] for s in yaml.safe_load(SELECTORS_PATH.read_text())["selectors"]}
    definition = selectors[selector]
    criteria = definition.get("union", [definition])
    if any(set(c) != {"method", "value"} for c in criteria):
        raise ValueError(f"dbt selector {selector!r}: only method/value criteria and their union are supported")
    return [f"{c['method']}:{c['value']}" for c in criteria]


def dbt_state_dir(cfg: PlatformConfig) -> Path:
    """dbt's folder of the config's warehouse (<warehouse dir>/dbt): target/ (compiled SQL, dbt's
    saved parse state) and logs/, for run_dbt and the DAGs' per-DAG dbt tasks alike."""
    return cfg.warehouse_path.resolve().parent / "dbt"


def spark_dir(cfg: PlatformConfig) -> Path:
    """The spark target's folder: its tables (warehouse/), its catalog (metastore_db/) and the
    DuckDB tables copied for it (exports/)."""
    return (cfg.data_root / "spark").resolve()


def dbt_env(cfg: PlatformConfig) -> dict[str, str]:
    """Environment of a dbt run: the absolute paths the profile reads (the DuckDB warehouse, the
    spark target's folder), the duckdb target's DuckDB settings (JSON; warehouse.memory_limit) and
    the object stores it reads the lake from."""
    return {"RECPIPE_WAREHOUSE": str(cfg.warehouse_path.resolve()), "RECPIPE_SPARK_DIR": str(spark_dir(cfg)),
            "RECPIPE_DUCKDB_SETTINGS": json.dumps(duckdb_settings(cfg)), **dbt_filesystems([cfg.lake_dir])}


def spark_sources(cfg: PlatformConfig) -> dict[str, Any]:
    """Var spark_sources (dbt/macros/spark_sources.sql, spark_marts.sql): the lake folder, each
    contract table's columns as [name, Spark type], the folders of the Parquet copies of the
    `experiments` tables that exist, and where the built models are written for DuckDB."""
    exports = spark_dir(cfg) / "exports"
    return {
        "marts": str(spark_dir(cfg) / "marts"),
        "lake": str(cfg.lake_dir.resolve()),  # local: PlatformConfig refuses a URL lake on spark
        "tables": {name: [[c.name, SPARK_TYPES[c.sql_type]] for c in t.columns] for name, t in TABLES.items()},
        "exports": {name: str(exports / name) for name in SPARK_EXPORTS if (exports / name).is_dir()},
    }


def views_over_spark(cfg: PlatformConfig) -> None:
    """After a dbt run on the spark target: point the warehouse's view of every model built on Spark
    at its newest complete Parquet folder (`<spark>/marts/<model>/<version>/`, macro spark_marts),
    in place of a DuckDB table of that name, and delete the model's older folders. The Python steps
    then read the Spark build through the warehouse as they read the DuckDB one."""
    root = spark_dir(cfg) / "marts"
    models = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    with connect(cfg, read_only=False) as con:
        kinds = dict(con.execute("select table_name, table_type from information_schema.tables "
                                 "where table_schema = 'main'").fetchall())
        for model in models:
            versions = sorted(model.iterdir())
            done = [v for v in versions if (v / "_SUCCESS").exists()]
            if not done:
                continue
            if kinds.get(model.name) == "BASE TABLE":
                con.execute(f'drop table main."{model.name}"')
            files = str(done[-1] / "*.parquet").replace("'", "''")
            con.execute(f"create or replace view main.\"{model.name}\" as select * from read_parquet('{files}')")
            for old in versions[:versions.index(done[-1])]:
                shutil.rmtree(old)


def spark_views_callback(project_dir: str, **_: Any) -> None:
    """Cosmos callback of the DAGs' dbt tasks on the spark target (after dbt, in the same task):
    views_over_spark for the task's config."""
    views_over_spark(get_config())


def export_for_spark(cfg: PlatformConfig) -> None:
    """Copy the DuckDB warehouse's `experiments` tables to Parquet for the spark target, one folder
    each (exports/<table>/data.parquet); a table the warehouse lacks loses its folder, so Spark
    reads it as missing too."""
    exports = spark_dir(cfg) / "exports"
    have: set[str] = set()
    if cfg.warehouse_path.exists():
        with connect(cfg) as con:
            have = table_names(con) & set(SPARK_EXPORTS)
            for name in sorted(have):
                (exports / name).mkdir(parents=True, exist_ok=True)
                con.execute(f"copy main.{name} to '{exports / name / 'data.parquet'}' (format parquet)")
    for name in set(SPARK_EXPORTS) - have:
        shutil.rmtree(exports / name, ignore_errors=True)


def dbt_vars(cfg: PlatformConfig) -> dict[str, Any]:
    """dbt vars from the config, the same on every run of it (so dbt's saved parse state stays
    valid from run to run): the segments (validated by the config; 'all' is reserved), the
    experiment buckets (the first is control), every pool (with its window in hours), the KOL,
    implicit-follow and ranking-label settings; on spark, spark_sources."""
    names = [s.name for s in cfg.segments] + list(cfg.simulator.experiment_buckets)
    if ALL in names:
        raise ValueError(f"segment and bucket names may not be {ALL!r} (the marts' 'every' slice)")
    spark = {"spark_sources": spark_sources(cfg)} if cfg.warehouse.engine == "spark" else {}
    return {
        "segments": [s.model_dump(mode="json") for s in cfg.segments],
        "buckets": list(cfg.simulator.experiment_buckets),
        "pools": [{**p.model_dump(mode="json"), "window_hours": p.window_hours} for p in cfg.pools],
        "kol": cfg.kol.model_dump(mode="json"),
        "implicit_follows": cfg.implicit_follows.model_dump(mode="json"),
        "ranking": {"long_view_seconds": cfg.ranking.full.long_view_seconds},
        **spark,
    }


def run_window(
    cfg: PlatformConfig,
    ds: str | None = None,
    ds_from: str | None = None,
    as_of: str | list[str] | None = None,
    pools: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The window of a run, which dbt reads from the environment (RUN_ENV; macro run_var in
    dbt/macros/day_window.sql) when a node executes: the days to rebuild, [ds_from, ds] (ds_from
    None: ds alone; ds None: every day), and for the pool models the refresh time(s) `as_of`
    ('YYYY-MM-DD HH:00:00', UTC) and the pools to render (None: every pool of the config)."""
    if ds_from is not None and ds is None:
        raise ValueError("dbt run window: ds_from needs ds (the last day to rebuild)")
    first, last = (dt.date.fromisoformat(d) if d else None for d in (ds_from, ds))
    if first and last and first > last:
        raise ValueError(f"ds_from {ds_from} is after ds {ds}")
    for name in pools or []:
        cfg.pool(name)  # an unknown pool raises, naming it
    return {"ds": ds, "ds_from": ds_from, "as_of": as_of, "pools": None if pools is None else list(pools)}


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of one in-process dbt invocation."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _invoke(args: list[str], cfg: PlatformConfig, window: dict[str, Any] | None = None) -> Any:
    """Run one dbt command in this process on the config's target, with the config's vars and the
    run's `window` (run_window; None: none); return dbt's result, or raise DbtError with its errors.
    Profile, target and vars are passed as the DAGs' dbt tasks pass them, so that dbt's saved parse
    state serves both."""
    from dbt.cli.main import dbtRunner  # lazy: dbt takes ~1.5 s to import; DAG files import this module

    with _environ({**dbt_env(cfg), RUN_ENV: json.dumps(window or {})}):
        result = dbtRunner().invoke([*args, "--vars", json.dumps(dbt_vars(cfg)), "--profile", PROFILE,
                                     "--target", cfg.warehouse.engine,
                                     "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR)])
    if result.success:
        return result.result
    failed = [
        f"{r.node.name}: {r.status}: {(r.message or '').strip()}"
        for r in (getattr(result.result, "results", None) or [])
        if str(r.status) in {"error", "fail", "runtime error"}
    ]
    detail = "\n".join(failed) or str(result.exception or "see the dbt log")
    raise DbtError(f"dbt {args[0]} failed:\n{detail}")


def build_manifest(cfg: PlatformConfig) -> Path:
    """`dbt parse` into dbt/target/manifest.json (Cosmos renders the DAGs' dbt task groups from it,
    no dbt ls). dbt writes into a scratch folder beside it and the manifest then replaces the old one
    in one rename: a DAG file parsed meanwhile, in this process or another, reads the old manifest
    or the new one, never half of one. dbt's saved parse state goes there and back, so an unchanged
    project parses in under a second; parsed with the config's vars, it also spares the DAGs' dbt
    tasks and run_dbt their first parse."""
    target = MANIFEST_PATH.parent
    target.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".parse-", dir=target))
    try:
        if (target / PARSE_STATE).exists():
            shutil.copy2(target / PARSE_STATE, scratch / PARSE_STATE)
        _invoke(["parse", "--quiet", "--target-path", str(scratch)], cfg)
        if (scratch / PARSE_STATE).exists():  # not written when partial parsing is off
            os.replace(scratch / PARSE_STATE, target / PARSE_STATE)
        os.replace(scratch / MANIFEST_PATH.name, MANIFEST_PATH)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("dbt manifest: %s", MANIFEST_PATH)
    return MANIFEST_PATH


def run_dbt(
    cfg: PlatformConfig,
    args: list[str],
    ds: str | None = None,
    ds_from: str | None = None,
    as_of: str | list[str] | None = None,
    pools: Sequence[str] | None = None,
) -> Any:
    """Run `dbt <args>` (e.g. ["build"], ["test", "--select", "metrics_daily"]) on the warehouse
    with the config's vars, rebuilding days [ds_from, ds]. Without ds, `build` and `run` are full
    refreshes (every day, tables recreated). On spark the `experiments` tables are copied for it
    first (export_for_spark), and the warehouse's views move to the models it built after
    (views_over_spark). Compiled SQL and logs go next to the warehouse
    (<warehouse dir>/dbt/), not into dbt/target, which holds the DAGs' manifest; the results are
    returned, not written as JSON artifacts. dbt's saved parse state is kept there too (seeded
    from dbt/target's): the window is not a var, so runs after the first skip the full parse."""
    window = run_window(cfg, ds, ds_from, as_of, pools)
    if cfg.warehouse.engine == "spark":
        export_for_spark(cfg)
    out = dbt_state_dir(cfg)
    state = out / "target" / PARSE_STATE
    if not state.exists() and (MANIFEST_PATH.parent / PARSE_STATE).exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MANIFEST_PATH.parent / PARSE_STATE, state)
    full_refresh = ["--full-refresh"] if ds is None and args[0] in {"build", "run"} else []
    flags = ["--target-path", str(out / "target"), "--log-path", str(out / "logs"), "--no-write-json"]
    result = _invoke([*args, *flags, *full_refresh], cfg, window)
    if cfg.warehouse.engine == "spark":
        views_over_spark(cfg)
    return result
