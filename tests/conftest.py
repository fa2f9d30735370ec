"""Shared fixtures: an isolated platform (config + data dir) per test, small simulator scale."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
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


@pytest.fixture(scope="session", autouse=True)
def dbt_manifest() -> Path:
    """The dbt manifest the daily_metrics DAG is rendered from (built by `recpipe airflow-setup`)."""
    from tasks.dbt_project import build_manifest

    return build_manifest(load_config(DEFAULT_CONFIG))
