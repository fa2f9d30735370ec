"""Shared fixtures: an isolated platform (config + data dir) per test, small simulator scale."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before anything imports airflow: tests never touch a developer's Airflow home.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="recpipe-airflow-home-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")

import numpy as np
import pytest
import yaml

from tasks.core.config import DEFAULT_CONFIG, PlatformConfig, load_config

SMALL_SIMULATOR = {"users": 400, "items": 300, "days": 3}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with a test marked slow first (in file order), then the rest: a parallel run
    (`make test`: `pytest -n 2`, with pyproject.toml's addopts) hands each worker a whole module at a time, in this
    order, so the long Airflow and simulation modules start at once and the short ones fill in."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Recorded properties as plain JSON values (numpy scalars as numbers): a parallel worker sends
    its reports to the controller, which takes only Python's own types."""
    report.user_properties = [(name, json.loads(json.dumps(value, default=_plain)))
                              for name, value in report.user_properties]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def write_config(path: Path, data_dir: Path, **overrides: dict) -> Path:
    """Write a copy of the shipped config with its data root at `data_dir` and sections overridden."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["paths"]["data_root"] = str(data_dir)
    raw["simulator"].update(SMALL_SIMULATOR)
    raw["airflow"]["retries"] = 0  # a failing task fails the test at once, not after a retry delay
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PlatformConfig:
    """A platform config whose data lives under tmp_path, exported through RECPIPE_CONFIG."""
    cfg_path = write_config(tmp_path / "recpipe.yaml", tmp_path / "data")
    monkeypatch.setenv("RECPIPE_CONFIG", str(cfg_path))
    monkeypatch.delenv("RECPIPE_DATA_DIR", raising=False)
    return load_config(cfg_path)


RETRIEVAL_SIMULATOR = {"users": 2000, "items": 1500, "days": 15}


def config_variant(source: Path, name: str, folder: Path | None = None, **sections: dict) -> Path:
    """A copy of the config file `source` as `<folder>/<name>.yaml` (default: beside it), over the
    same data but with its own artifact store (`<name>-artifacts`) and `sections` updated (one
    level deep: `ranking={"nightly": False}` keeps the rest of `ranking`)."""
    folder = folder or source.parent
    raw = yaml.safe_load(source.read_text())
    raw["paths"]["artifacts"] = str(folder / f"{name}-artifacts")
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small models train fastest on one thread (and the machine is shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ranking_world(tmp: Path, **sections: dict) -> PlatformConfig:
    """The small simulation (SMALL_SIMULATOR) under `tmp`, loaded, with dbt's staging views and its
    ranking exposures; the config's other sections overridden by `sections`."""
    from tasks.core.dbt_runner import run_dbt
    from tasks.core.warehouse import refresh_views
    from tasks.ingest.load import load_dir
    from tasks.ranking.data import build_exposures
    from tasks.simulator import simulate

    cfg = load_config(write_config(tmp / "recpipe.yaml", tmp / "data", **sections))
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["run", "--select", "path:models/staging"])
    build_exposures(cfg, cfg.simulator.start_date, last_day(cfg))
    return cfg


def last_day(cfg: PlatformConfig) -> dt.date:
    """The last simulated day."""
    return cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.days - 1)


@pytest.fixture(scope="session")
def retrieval_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config file of 2,000 users x 15 simulated days, loaded, with dbt's staging views, user
    segments and the implicit follows of days 13 and 14 (what the retrieval channels read)."""
    from tasks.core.dbt_runner import run_dbt
    from tasks.core.warehouse import refresh_views
    from tasks.ingest.load import load_dir
    from tasks.simulator import simulate
    from tasks.social import implicit_follows

    tmp = tmp_path_factory.mktemp("retrieval")
    path = write_config(tmp / "recpipe.yaml", tmp / "data", simulator=RETRIEVAL_SIMULATOR)
    cfg = load_config(path)
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["run", "--select", "path:models/staging", "+int_user_day_segments"])  # + evaluation segments
    last = cfg.simulator.start_date + dt.timedelta(days=RETRIEVAL_SIMULATOR["days"] - 2)
    implicit_follows.build(cfg, (last - dt.timedelta(days=1)).isoformat(), last.isoformat())
    return path


@pytest.fixture(scope="session", autouse=True)
def dbt_manifest() -> Path:
    """The dbt manifest the daily_metrics DAG is rendered from (built by `recpipe airflow-setup`)."""
    from tasks.core.dbt_runner import build_manifest

    return build_manifest(load_config(DEFAULT_CONFIG))


@pytest.fixture(scope="session")
def served_world(retrieval_sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlatformConfig, dt.date]]:
    """A copy of the 15-day simulation with the artifacts of the night after day 14 (the feeds are
    for day 15): pools refreshed, retrieval and ranking models current, ANN indexes published."""
    import torch

    from tasks.core.warehouse import refresh_views
    from tasks.pools.refresh import end_of_day, refresh_pools
    from tasks.ranking import full, pre
    from tasks.ranking.data import build_exposures
    from tasks.retrieval import ann_refresh, i2i, two_tower

    tmp = tmp_path_factory.mktemp("serving")
    source = load_config(retrieval_sim)
    shutil.copytree(source.data_root, tmp / "data")
    raw = yaml.safe_load(retrieval_sim.read_text())
    raw["paths"]["data_root"] = str(tmp / "data")
    raw["ranking"]["full"]["first_window_days"] = 4
    path = tmp / "recpipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    day = cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.days - 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECPIPE_CONFIG", str(path))
        mp.delenv("RECPIPE_DATA_DIR", raising=False)
        refresh_views(cfg)
        refresh_pools(cfg, [end_of_day(day)], [p.name for p in cfg.pools if p.refresh == "daily"])
        two_tower.train(cfg, day, make_current=True)
        for model in ("itemcf", "swing"):
            i2i.train(cfg, model, day, make_current=True)
        first = day - dt.timedelta(days=3)
        build_exposures(cfg, first, day)
        full.train(cfg, day, make_current=True)
        pre.train(cfg, day, None, first=first, make_current=True)
        for pool in cfg.pools:
            if pool.refresh == "daily":
                ann_refresh.refresh(cfg, "two_tower", pool.name)
        yield cfg, day
    torch.set_num_threads(threads)
