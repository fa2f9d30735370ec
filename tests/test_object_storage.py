"""The lake, the artifacts and the reports on an S3-compatible object store (moto's server, started
here): the same lake files and marts as a local lake, compaction and reloads on the store, the
nightly DAG publishing its models there, a fresh process serving from them, atomic publishes.

What the store holds is read with boto3, not through the platform's own storage code."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from tasks.core import artifacts, registry
from tasks.core.config import ConfigError, PlatformConfig, load_config
from tasks.core.dbt_runner import run_dbt
from tasks.core.lake import compact
from tasks.core.warehouse import connect, refresh_views
from tasks.ingest.load import load_dir
from tasks.orchestration.local_airflow import run_dag_for_days, setup_metadata
from tasks.pools.refresh import AS_OF_FORMAT, end_of_day, refresh_pools
from tasks.reports.page import write_report
from tasks.retrieval import ann_refresh
from tasks.retrieval.nightly import train_candidate
from tasks.simulator import simulate
from tests.conftest import last_day, write_config

pytestmark = pytest.mark.slow
BUCKET = "recpipe"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
SIMULATOR = {"users": 600, "items": 400, "days": 4}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """An S3-compatible server on a free port with an empty bucket; AWS credentials for it in the
    environment (of this process and of the Airflow and CLI processes it starts)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        yield url
    server.stop()


def _objects(url: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix`, by key relative to it."""
    s3 = boto3.client("s3", endpoint_url=url)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
            for o in page.get("Contents", [])]
    return {k.removeprefix(f"{prefix}/"): s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items() if k.endswith(".parquet")}


def _local_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*.parquet")}


def _writes(data: bytes):
    """A version writer putting `data` into w.bin."""
    def write(folder: Path) -> dict:
        (folder / "w.bin").write_bytes(data)
        return {}
    return write


def _tables(cfg: PlatformConfig) -> dict[str, pd.DataFrame]:
    """Every table and view of the warehouse, rows sorted."""
    with connect(cfg) as con:
        names = [f'"{s}"."{t}"' for s, t in con.execute(
            "select table_schema, table_name from information_schema.tables order by all").fetchall()]
        frames = {n: con.execute(f"select * from {n}").df() for n in names}
    return {n: df.sort_values(list(df.columns)).reset_index(drop=True) for n, df in frames.items()}


@pytest.fixture(scope="module")
def worlds(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[PlatformConfig, PlatformConfig]:
    """The same simulation loaded into a local lake and into a lake on the store, each built by dbt."""
    tmp = tmp_path_factory.mktemp("object-storage")
    local = load_config(write_config(tmp / "local.yaml", tmp / "local", simulator=SIMULATOR))
    stored = load_config(write_config(
        tmp / "s3.yaml", tmp / "s3", simulator=SIMULATOR,
        paths={"lake": f"s3://{BUCKET}/lake", "artifacts": f"s3://{BUCKET}/artifacts",
               "reports": f"s3://{BUCKET}/reports", "storage_options": {"s3": {"endpoint_url": endpoint}}}))
    simulate(local.simulator, local.landing_dir, local.ground_truth_dir)
    last = last_day(local)
    for cfg in (local, stored):
        load_dir(local.landing_dir, cfg)
        refresh_views(cfg)
        run_dbt(cfg, ["build"])
        run_dbt(cfg, ["run", "--select", "path:models/pools", "path:models/social", "path:models/ranking"],
                ds_from=(last - dt.timedelta(days=1)).isoformat(), ds=last.isoformat(),
                as_of=[end_of_day(last).strftime(AS_OF_FORMAT)])
    return local, stored


def test_the_lake_on_the_store_holds_the_same_files_and_builds_the_same_marts(worlds, endpoint) -> None:
    local, stored = worlds
    files = _digests(_objects(endpoint, "lake"))
    assert files == _local_digests(local.lake_dir)  # byte for byte: the same batch files
    assert len(files) >= 4 * SIMULATOR["days"]
    assert str(stored.lake_dir) == f"s3://{BUCKET}/lake" and not (stored.data_root / "lake").exists()
    marts = _tables(stored)
    assert {f'"main"."{m}"' for m in ("metrics_daily", "retention_daily", "ab_readout", "kol_features",
                                      "ranking_exposures", "pool_candidates")} <= set(marts)
    for name, frame in _tables(local).items():
        pd.testing.assert_frame_equal(marts[name], frame, obj=name)


def test_compaction_and_a_reload_on_the_store_keep_every_row_once(worlds, endpoint) -> None:
    local, stored = worlds
    with connect(stored) as con:
        before = {t: con.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in ("events", "users", "items")}
    done = compact(stored.lake_dir, stored.simulator.start_date.replace(day=28) + dt.timedelta(days=7))
    assert done and all(c.day_files for c in done)
    keys = _objects(endpoint, "lake")
    assert not [k for k in keys if "/dt=" in k], "day files left after compaction"
    assert {k.split("/")[1] for k in keys if k.endswith("compacted.parquet")} == {"month=2026-01"}
    # a reload of the first day after compaction: its day files shadow its rows in the month file
    load_dir(local.landing_dir / f"dt={stored.simulator.start_date}", stored)
    refresh_views(stored)
    with connect(stored) as con:
        after = {t: con.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in before}
    assert after == before
    with connect(local) as con:
        assert after == {t: con.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in before}


def test_the_nightly_dag_publishes_to_the_store_and_a_fresh_process_serves_from_it(
        worlds, endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, stored = worlds
    day = last_day(stored)
    path = tmp_path / "nightly.yaml"
    raw = json.loads(stored.model_dump_json())
    raw["retrieval"]["nightly_models"] = []  # the DAG's ranking group; the two-tower is trained below
    path.write_text(json.dumps(raw))  # YAML is a superset of JSON
    cfg = load_config(path)
    monkeypatch.setenv("RECPIPE_CONFIG", str(path))
    monkeypatch.setenv("RECPIPE_CACHE_DIR", str(tmp_path / "cache-trainer"))
    setup_metadata(cfg)
    run_dag_for_days("nightly_training", [day])
    # the retrieval models (their gate is tests/test_model_gate.py's business) and the pools' ANN indexes
    for model in ("two_tower", "itemcf", "swing"):
        artifacts.switch(registry.model_store(cfg, model), train_candidate(cfg, model, day))
    published = [o.pool for o in refresh_pools(cfg, [end_of_day(day)]) if o.published]
    assert published
    indexed = [p for p in published if ann_refresh.refresh(cfg, "two_tower", p).version]
    assert indexed
    write_report(cfg)

    objects = _objects(endpoint, "artifacts")
    for store in ("models/full_ranking", "models/preranking", "models/two_tower", f"ann/two_tower/{indexed[0]}"):
        current = json.loads(objects[f"{store}/CURRENT"])["version"]
        meta = json.loads(objects[f"{store}/versions/{current}/meta.json"])
        assert meta["version"] == current
        assert len([k for k in objects if k.startswith(f"{store}/versions/{current}/")]) > 1
    assert b"recpipe metrics" in _objects(endpoint, "reports")["metrics/index.html"]

    fresh = tmp_path / "cache-server"
    env = {**os.environ, "RECPIPE_CACHE_DIR": str(fresh)}
    out = subprocess.run([str(Path(sys.executable).parent / "recpipe"), "recommend", "--user", "3", "--day", str(day)],
                         check=False, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "two_tower" in out.stdout and "served without" not in out.stdout
    copied = {p.parent.name for p in fresh.rglob("meta.json")}
    wanted = {json.loads(objects[f"{s}/CURRENT"])["version"] for s in ("models/full_ranking", "models/two_tower")}
    assert wanted <= copied


def test_a_publish_on_the_store_is_atomic(endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from upath import UPath

    monkeypatch.setenv("RECPIPE_CACHE_DIR", str(tmp_path / "cache-a"))
    store = UPath(f"s3://{BUCKET}/atomic", endpoint_url=endpoint)
    first = artifacts.publish(store, _writes(b"one"))
    assert artifacts.current(store).name == first.name

    def broken(folder: Path) -> dict:
        (folder / "w.bin").write_bytes(b"two")
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError):
        artifacts.publish(store, broken)
    real_put = store.fs.put_file

    def put_until_meta(local, remote, **kw):  # the upload dies before meta.json: the version never exists
        if remote.endswith("meta.json"):
            raise ConnectionError("network gone")
        return real_put(local, remote, **kw)

    monkeypatch.setattr(store.fs, "put_file", put_until_meta)
    with pytest.raises(ConnectionError):
        artifacts.publish(store, _writes(b"three"))
    monkeypatch.undo()
    keys = _objects(endpoint, "atomic")
    assert {k.split("/")[1] for k in keys if k.startswith("versions/")} == {first.name}
    assert json.loads(keys["CURRENT"])["version"] == first.name
    assert not [p for p in (tmp_path / "cache-a").rglob("*") if p.name.startswith(".")], "staging left behind"

    second = artifacts.publish(store, _writes(b"four"), make_current=False)
    assert artifacts.current(store).name == first.name  # written, not switched
    artifacts.annotate(store, second.name, {"evaluation": {"passed": True}})
    artifacts.switch(store, second.name)
    # another machine: an empty cache, the annotated meta, the files copied down once
    monkeypatch.setenv("RECPIPE_CACHE_DIR", str(tmp_path / "cache-b"))
    seen = artifacts.current(store)
    assert seen.name == second.name and seen.meta["evaluation"] == {"passed": True}
    assert (seen.path / "w.bin").read_bytes() == b"four" and str(seen.path).startswith(str(tmp_path / "cache-b"))
    assert artifacts.prune(store, keep=1) == [first.name]
    assert not [k for k in _objects(endpoint, "atomic") if first.name in k]


def test_only_the_lake_artifacts_and_reports_may_be_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="paths.warehouse"):
        load_config(write_config(tmp_path / "a.yaml", tmp_path, paths={"warehouse": "s3://b/w.duckdb"}))
    with pytest.raises(ConfigError, match="spark engine reads a local lake"):
        load_config(write_config(tmp_path / "b.yaml", tmp_path, paths={"lake": "s3://b/lake"},
                                 warehouse={"engine": "spark"}))
