"""Shared fixtures: an isolated platform (config + data dir) per test, small simulator scale."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before anything imports airflow: tests never touch a developer's Airflow home.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="recpipe-airflow-home-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")

import pytest
import yaml

from tasks.config import DEFAULT_CONFIG, PlatformConfig, load_config

SMALL_SIMULATOR = {"users": 400, "items": 300, "days": 3}


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


@pytest.fixture(scope="session")
def retrieval_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config file of 2,000 users x 15 simulated days, loaded, with dbt's staging views, user
    segments and the implicit follows of days 13 and 14 (what the retrieval channels read)."""
    import datetime as dt

    from tasks import implicit_follows
    from tasks.dbt_project import run_dbt
    from tasks.load import load_dir
    from tasks.simulator import simulate
    from tasks.warehouse import refresh_views

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
    from tasks.dbt_project import build_manifest

    return build_manifest(load_config(DEFAULT_CONFIG))
