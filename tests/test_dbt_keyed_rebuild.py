"""Keyed incremental models on DuckDB (dbt/macros/cross_db.sql `incremental_by`, strategy
replace_keys): re-running the metric and pool selections for days already built leaves every keyed
incremental table as a fresh build of a fresh warehouse has it, row for row; and the config's
`warehouse.memory_limit` reaches DuckDB, on the Python connections and in dbt."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tasks.core.config import ConfigError, PlatformConfig, load_config
from tasks.core.dbt_runner import MANIFEST_PATH, run_dbt
from tasks.core.warehouse import connect, refresh_views
from tasks.ingest.load import load_dir
from tasks.pools.refresh import AS_OF_FORMAT, end_of_day
from tasks.simulator import simulate
from tests.conftest import last_day, write_config

MEMORY_LIMIT = "1GiB"
NIGHT = ["run", "--select", "path:models/pools", "path:models/social", "path:models/ranking"]


def _keyed_models() -> list[str]:
    """Every incremental model of the dbt manifest (the DuckDB target's), checked to be keyed."""
    nodes = json.loads(MANIFEST_PATH.read_text())["nodes"].values()
    models = [n for n in nodes if n["resource_type"] == "model" and n["config"]["materialized"] == "incremental"]
    assert models and all(n["config"]["incremental_strategy"] == "replace_keys" and n["config"]["unique_key"]
                          for n in models)
    return sorted(n["name"] for n in models)


def _as_of(*days: dt.date) -> list[str]:
    """Two refreshes per day: 18:00 and the end of the day."""
    return [(end_of_day(d) - dt.timedelta(hours=h)).strftime(AS_OF_FORMAT) for d in days for h in (6, 0)]


def _table(cfg: PlatformConfig, name: str) -> pd.DataFrame:
    """Table `name`, its rows sorted by every column (floats last)."""
    with connect(cfg) as con:
        df = con.sql(f"select * from main.{name}").df()
    floats = [c for c in df.columns if df[c].dtype.kind == "f"]
    order = [c for c in df.columns if c not in floats] + floats
    return df.sort_values(order).reset_index(drop=True)


def _fresh_warehouse(cfg: PlatformConfig, warehouse: Path) -> PlatformConfig:
    raw = cfg.model_dump(mode="json")
    raw["paths"] = {**raw["paths"], "data_root": str(cfg.data_root), "warehouse": str(warehouse)}
    return PlatformConfig.model_validate(raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """The small simulation (3 days), loaded, DuckDB limited to MEMORY_LIMIT."""
    tmp = tmp_path_factory.mktemp("keyed-rebuild")
    cfg = load_config(write_config(tmp / "recpipe.yaml", tmp / "data", warehouse={"memory_limit": MEMORY_LIMIT}))
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    return cfg


def test_rerunning_built_days_equals_a_fresh_build(world: PlatformConfig, tmp_path: Path) -> None:
    last = last_day(world)
    before = last - dt.timedelta(days=1)
    run_dbt(world, ["run"])
    run_dbt(world, NIGHT, ds=before.isoformat(), as_of=_as_of(before))
    run_dbt(world, NIGHT, ds=last.isoformat(), as_of=_as_of(last))
    with connect(world) as con:
        rendered = con.execute("select count(*) from pool_candidates where as_of >= ?", [last]).fetchone()[0]
    assert rendered > 0  # the re-run below deletes these rows, then inserts them again
    run_dbt(world, ["run"], ds=last.isoformat())  # the metric models' days
    run_dbt(world, NIGHT, ds_from=before.isoformat(), ds=last.isoformat(), as_of=_as_of(before, last))

    fresh = _fresh_warehouse(world, tmp_path / "fresh.duckdb")
    refresh_views(fresh)
    run_dbt(fresh, ["run"])
    run_dbt(fresh, NIGHT, ds_from=before.isoformat(), ds=last.isoformat(), as_of=_as_of(before, last))

    for name in _keyed_models():
        rerun, built = _table(world, name), _table(fresh, name)
        assert len(built) > 0, name
        pd.testing.assert_frame_equal(rerun, built, check_exact=False, rtol=1e-9, obj=name)


def test_memory_limit_reaches_duckdb(world: PlatformConfig) -> None:
    with duckdb.connect() as con:
        default = con.execute("select current_setting('memory_limit')").fetchone()[0]
        con.execute(f"set memory_limit = '{MEMORY_LIMIT}'")
        expected = con.execute("select current_setting('memory_limit')").fetchone()[0]
    assert expected != default
    with connect(world) as con:
        assert con.execute("select current_setting('memory_limit')").fetchone()[0] == expected
    shown = run_dbt(world, ["show", "--inline", "select current_setting('memory_limit') as memory_limit"])
    assert shown.results[0].agate_table.rows[0]["memory_limit"] == expected


def test_memory_limit_is_a_size_or_a_share(tmp_path: Path) -> None:
    for limit in ("8GB", "512MiB", "1.5 GB", "50%"):
        assert load_config(write_config(tmp_path / "ok.yaml", tmp_path, warehouse={"memory_limit": limit}))
    with pytest.raises(ConfigError, match="warehouse.memory_limit"):
        load_config(write_config(tmp_path / "bad.yaml", tmp_path, warehouse={"memory_limit": "8"}))
