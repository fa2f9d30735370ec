"""dbt on Spark (docs/SCALE.md "dbt on Spark"): on one small simulated lake (a compacted month, one of
its days loaded again so that its day files shadow the month's rows), every mart built with the
spark target (a local Spark started here) equals the DuckDB build row for row: the same columns
and kinds of type, integers, strings, dates and times equal, floats within 1e-9 relative. Both engines run the same dbt
invocations: a full build, then an incremental one (days rebuilt by partition overwrite on Spark,
by delete+insert on DuckDB) with the pools, social and ranking models."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from pyspark.sql import SparkSession

from tasks.core.config import PlatformConfig, load_config
from tasks.core.dbt_runner import run_dbt
from tasks.core.lake import compact
from tasks.core.warehouse import refresh_views
from tasks.experiments.assignment import publish_assignments
from tasks.ingest.load import load_batch, load_dir
from tasks.pools.refresh import AS_OF_FORMAT, end_of_day
from tasks.simulator import simulate
from tasks.social.kol import score_days
from tests.conftest import write_config

pytestmark = pytest.mark.slow
START = dt.date(2025, 12, 30)  # December compacted into its month files, January in day files
DAYS = 5
LAST = START + dt.timedelta(days=DAYS - 1)
SIMULATOR = {"users": 300, "items": 200, "days": DAYS, "start_date": START.isoformat()}
EXPERIMENT = {"name": "trial", "start": "2025-12-31", "base_strategy": "baseline",
              "arms": {"control": {}, "explore": {"exploration": {"share": 0.02}}}}
INCREMENTAL = {"ds_from": (LAST - dt.timedelta(days=2)).isoformat(), "ds": LAST.isoformat(),
               "as_of": [end_of_day(LAST - dt.timedelta(days=1)).strftime(AS_OF_FORMAT),
                         end_of_day(LAST).strftime(AS_OF_FORMAT)]}
KEYS = {
    "metrics_daily": ["day", "segment", "experiment_bucket"],
    "retention_daily": ["day", "segment", "experiment_bucket"],
    "ab_readout": ["day", "metric", "experiment_bucket"],
    "experiment_readout": ["experiment", "metric", "arm"],
    "experiment_weekly": ["experiment", "week", "metric", "arm"],
    "experiment_srm": ["experiment", "arm"],
    "experiment_guardrails": ["experiment", "arm"],
    "pool_candidates": ["as_of", "pool", "segment", "item_id"],
    "kol_features": ["day", "user_id"],
    "implicit_follows": ["day", "user_id", "author_id"],
    "ranking_exposures": ["day", "user_id", "item_id"],
}
RTOL = 1e-9


def _build(cfg: PlatformConfig) -> None:
    """The same dbt invocations on either target: every metric model from scratch, then the marts
    (incremental: the last days again), pools, social and ranking models for the last days."""
    run_dbt(cfg, ["run"])
    run_dbt(cfg, ["run", "--select", "path:models/marts", "path:models/pools", "path:models/social",
                  "path:models/ranking"], **INCREMENTAL)


def _family(kind: pa.DataType) -> str:
    """What is compared: int (any width; DuckDB's HUGEINT sums arrive as decimal(38, 0)), float
    (or a fractional decimal), string, bool, date or timestamp."""
    if pa.types.is_integer(kind) or (pa.types.is_decimal(kind) and kind.scale == 0):
        return "int"
    kinds = (("float", pa.types.is_floating), ("float", pa.types.is_decimal), ("bool", pa.types.is_boolean),
             ("date", pa.types.is_date), ("timestamp", pa.types.is_timestamp))
    for family, test in kinds:
        if test(kind):
            return family
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    raise AssertionError(f"unexpected column type {kind}")


def _values(column: pa.ChunkedArray) -> list:
    """A column as Python values; timestamps without their zone (Spark's are UTC, DuckDB's naive UTC)."""
    if pa.types.is_timestamp(column.type) and column.type.tz is not None:
        column = column.cast(pa.timestamp(column.type.unit))
    if pa.types.is_decimal(column.type):
        return [None if v is None else int(v) for v in column.to_pylist()]
    return column.to_pylist()


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """A local Spark for the test run: 2 cores, 2 shuffle partitions, no UI, the catalog in memory
    and the tables in a temporary folder; the JVM's quick compiler only (C1: a short run on small
    data spends most of its time planning, which the optimizing compiler would only slow down).
    dbt's session method uses this session."""
    session = (
        SparkSession.builder.master("local[2]")
        .appName("recpipe-test-dbt-spark")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> dict[str, Any]:
    """Per mart (sorted by its key columns): the DuckDB build ("duckdb"), the Spark build read by
    Spark ("spark") and read through the DuckDB warehouse's views ("warehouse"); and the KOL scores
    that the Python step computed from each build's kol_features ("kol_scores": duckdb, spark)."""
    tmp = tmp_path_factory.mktemp("dbt-spark")
    configs = {}
    for engine in ("duckdb", "spark"):
        path = write_config(tmp / f"{engine}.yaml", tmp / "data", simulator=SIMULATOR, warehouse={"engine": engine})
        raw = yaml.safe_load(path.read_text())
        raw["experiments"] = [EXPERIMENT]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        configs[engine] = load_config(path)
    cfg = configs["duckdb"]
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    assert compact(cfg.lake_dir, dt.date(2026, 1, 1))
    load_batch(cfg.landing_dir / f"dt={(START + dt.timedelta(days=1)).isoformat()}", cfg)  # shadows its month rows
    refresh_views(cfg)
    publish_assignments(cfg)
    lake = sorted(p.relative_to(cfg.lake_dir) for p in cfg.lake_dir.rglob("*.parquet"))

    keys = {name: [(k, "ascending") for k in KEYS[name]] for name in KEYS}
    found: dict[str, Any] = {}
    for engine, where in (("duckdb", "duckdb"), ("spark", "warehouse")):
        _build(configs[engine])
        score_days(configs[engine], INCREMENTAL["ds_from"], INCREMENTAL["ds"])  # reads kol_features
        with duckdb.connect(str(cfg.warehouse_path), read_only=True) as con:
            found[where] = {name: con.sql(f"select * from {name}").to_arrow_table().sort_by(keys[name])
                            for name in KEYS}
            found.setdefault("kol_scores", {})[engine] = con.sql("select * from kol_scores order by all").df()
            found.setdefault("views", {})[engine] = {r[0] for r in con.sql(
                "select table_name from information_schema.tables where table_type = 'VIEW'").fetchall()}
    assert sorted(p.relative_to(cfg.lake_dir) for p in cfg.lake_dir.rglob("*.parquet")) == lake  # untouched
    found["spark"] = {name: spark.table(f"main.{name}").toArrow().sort_by(keys[name]) for name in KEYS}
    return found


@pytest.fixture(scope="module")
def marts(builds: dict[str, Any]) -> dict[str, tuple[pa.Table, pa.Table]]:
    """Per mart: (DuckDB build, Spark build), sorted by its key columns."""
    return {name: (builds["duckdb"][name], builds["spark"][name]) for name in KEYS}


@pytest.mark.parametrize("name", list(KEYS))
def test_the_spark_build_equals_the_duckdb_build(marts: dict[str, tuple[pa.Table, pa.Table]], name: str) -> None:
    """Row for row, by the mart's key (unique), column by column."""
    duck, spark = marts[name]
    assert duck.num_rows > 0, f"{name}: no rows to compare"
    assert duck.group_by(KEYS[name]).aggregate([]).num_rows == duck.num_rows, f"{name}: key not unique"
    assert sorted(spark.column_names) == sorted(duck.column_names)
    assert spark.num_rows == duck.num_rows
    for column in duck.column_names:
        a, b = duck[column], spark[column]
        family = _family(a.type)
        assert _family(b.type) == family, f"{name}.{column}: {a.type} vs {b.type}"
        if family != "float":
            assert _values(a) == _values(b), f"{name}.{column} differs"
            continue
        x, y = (np.array(c.to_pylist(), dtype=float) for c in (a, b))
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{name}.{column}: nulls differ"
        x, y = x[~np.isnan(x)], y[~np.isnan(y)]
        worst = np.abs(x - y) / np.maximum(np.maximum(np.abs(x), np.abs(y)), np.finfo(float).tiny)
        assert np.all(worst <= RTOL), f"{name}.{column}: relative difference up to {worst.max():.2e}"


def test_the_python_steps_read_the_spark_build_through_the_warehouse(builds: dict[str, Any]) -> None:
    """On spark, the warehouse's marts are views over the Parquet that Spark wrote (no DuckDB copy
    of the models), equal to the Spark tables; the KOL scoring step, which reads kol_features from
    the warehouse, scores the Spark build as it scores the DuckDB one."""
    assert set(KEYS) <= builds["views"]["spark"] and not set(KEYS) & builds["views"]["duckdb"]
    for name in KEYS:
        assert builds["warehouse"][name].num_rows == builds["spark"][name].num_rows > 0, name
        for column in builds["spark"][name].column_names:
            assert _values(builds["warehouse"][name][column]) == _values(builds["spark"][name][column]), \
                f"{name}.{column}"
    duck, spark = builds["kol_scores"]["duckdb"], builds["kol_scores"]["spark"]
    assert len(duck) > 0
    pd.testing.assert_frame_equal(spark, duck, rtol=RTOL)
