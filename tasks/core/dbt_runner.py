"""The dbt project (dbt/): where it is, what each job selects (dbt/selectors.yml), the environment
and vars a run gets from the platform config, the manifest the DAGs' dbt task groups are rendered
from, and running dbt in this process (the `recpipe` commands and tests that call the task
functions directly).

dbt runs in-process through dbtRunner (a dbt subprocess spends ~3 s importing before it starts;
measured here: 7.1 s per `dbt run` as a subprocess, 1.7 s in-process after the first). The
profile sets `keep_open: false`, so the DuckDB file is closed when an invocation ends and the
process can open the warehouse again (read-only) right after.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import ALL, REPO_ROOT, PlatformConfig

log = logging.getLogger(__name__)
DBT_DIR = REPO_ROOT / "dbt"
PROFILES_PATH = DBT_DIR / "profiles.yml"
MANIFEST_PATH = DBT_DIR / "target" / "manifest.json"
SELECTORS_PATH = DBT_DIR / "selectors.yml"


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


def dbt_env(cfg: PlatformConfig) -> dict[str, str]:
    """Environment of a dbt run: the absolute warehouse path the profile reads."""
    return {"RECPIPE_WAREHOUSE": str(cfg.warehouse_path.resolve())}


def dbt_vars(
    cfg: PlatformConfig,
    ds: str | None = None,
    ds_from: str | None = None,
    as_of: str | list[str] | None = None,
    pools: Sequence[str] | None = None,
) -> dict[str, Any]:
    """dbt vars from the config: the days to rebuild, [ds_from, ds] (ds_from None: ds alone; ds
    None: every day), the segments
    (validated by the config; 'all' is reserved), the experiment buckets (the first is control),
    and for the pool and social models the refresh time(s) `as_of` ('YYYY-MM-DD HH:00:00', UTC),
    the pools (those named in `pools`, default all; with their window in hours), the KOL,
    implicit-follow and ranking-label settings."""
    if ds_from is not None and ds is None:
        raise ValueError("dbt vars: ds_from needs ds (the last day to rebuild)")
    names = [s.name for s in cfg.segments] + list(cfg.simulator.experiment_buckets)
    if ALL in names:
        raise ValueError(f"segment and bucket names may not be {ALL!r} (the marts' 'every' slice)")
    return {
        "ds": ds,
        "ds_from": ds_from,
        "segments": [s.model_dump(mode="json") for s in cfg.segments],
        "buckets": list(cfg.simulator.experiment_buckets),
        "as_of": as_of,
        "pools": [
            {**cfg.pool(name).model_dump(mode="json"), "window_hours": cfg.pool(name).window_hours}
            for name in (pools if pools is not None else [p.name for p in cfg.pools])
        ],
        "kol": cfg.kol.model_dump(mode="json"),
        "implicit_follows": cfg.implicit_follows.model_dump(mode="json"),
        "ranking": {"long_view_seconds": cfg.ranking.full.long_view_seconds},
    }


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


def _invoke(args: list[str], env: dict[str, str]) -> Any:
    """Run one dbt command in this process; return dbt's result, or raise DbtError with its errors."""
    from dbt.cli.main import dbtRunner  # lazy: dbt takes ~1.5 s to import; DAG files import this module

    with _environ(env):
        result = dbtRunner().invoke([*args, "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR)])
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
    """`dbt parse`: write dbt/target/manifest.json (Cosmos renders the DAGs' dbt task groups from it,
    no dbt ls)."""
    _invoke(["parse", "--quiet"], dbt_env(cfg))
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
    refreshes (every day, tables recreated). Compiled SQL and logs go next to the warehouse
    (<warehouse dir>/dbt/), not into dbt/target, which holds the DAGs' manifest; the results are
    returned, not written as JSON artifacts. The vars differ from run to run (ds), which makes dbt
    parse the whole project anyway, so partial parsing (reading its saved state) is off."""
    first, last = (dt.date.fromisoformat(d) if d else None for d in (ds_from, ds))
    if first and last and first > last:
        raise ValueError(f"ds_from {ds_from} is after ds {ds}")
    out = cfg.warehouse_path.resolve().parent / "dbt"
    full_refresh = ["--full-refresh"] if ds is None and args[0] in {"build", "run"} else []
    flags = [
        "--vars", json.dumps(dbt_vars(cfg, ds, ds_from, as_of, pools)),
        "--target-path", str(out / "target"),
        "--log-path", str(out / "logs"),
        "--no-write-json",
        "--no-partial-parse",
    ]
    return _invoke([*args, *flags, *full_refresh], dbt_env(cfg))
