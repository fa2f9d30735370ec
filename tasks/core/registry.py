"""The model registry: one artifact store per model under `<artifacts>/models/<name>` (see
tasks/core/artifacts.py). Every trained model is a new version (weights as state dicts, config,
metrics, training window, data hash in meta.json); `current` moves only when a version passes
its evaluation gate, or by an explicit rollback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tasks.core import artifacts
from tasks.core.config import PlatformConfig
from tasks.core.storage import Location


def model_store(cfg: PlatformConfig, model: str) -> Location:
    """Where a model's versions live."""
    return cfg.artifacts_dir / "models" / model


def feed_store(cfg: PlatformConfig) -> Location:
    """Where the nightly feeds' versions live."""
    return cfg.artifacts_dir / "feeds"


def ann_task_id(model: str, pool: str) -> str:
    """The ann_refresh task (and alert source) of one (vector model, pool) index, e.g.
    index_two_tower__pool_30d."""
    return f"index_{model}__{pool}"


def registered_models(cfg: PlatformConfig) -> list[str]:
    """Models with at least one version."""
    root = cfg.artifacts_dir / "models"
    return sorted(p.name for p in root.iterdir() if artifacts.list_versions(p)) if root.exists() else []


def describe(cfg: PlatformConfig, model: str | None = None) -> list[dict]:
    """One row per version (oldest first per model): model, version, current, created_at,
    training window and the evaluation metrics recorded in its meta."""
    rows = []
    for name in [model] if model else registered_models(cfg):
        store = model_store(cfg, name)
        cur = artifacts.current(store)
        for v in artifacts.list_versions(store):
            rows.append({
                "model": name,
                "version": v.name,
                "current": bool(cur and cur.name == v.name),
                "created_at": v.meta.get("created_at", ""),
                "window": v.meta.get("training_window", ""),
                "parent": v.meta.get("warm_started_from", ""),
                "metrics": v.meta.get("evaluation", {}),
            })
    return rows


def rollback(cfg: PlatformConfig, model: str, version: str) -> None:
    """Make an earlier (or any existing) version of `model` current again."""
    artifacts.switch(model_store(cfg, model), version)


def trained_through(version: artifacts.Version) -> dt.date:
    """The last day of a version's training window (meta `training_window`, 'first..last')."""
    return dt.date.fromisoformat(version.meta["training_window"].split("..")[1])


def trained_before(store: Path, day: dt.date) -> artifacts.Version | None:
    """The version whose training ended before `day`: the current one if it did, else (a re-run
    after the night's training) the newest that did; None if none did."""
    current = artifacts.current(store)
    for version in [*([current] if current else []), *artifacts.list_versions(store)[::-1]]:
        if trained_through(version) < day:
            return version
    return None
