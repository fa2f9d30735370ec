"""Versioned artifacts (model weights, ANN indexes): every publish writes a new version folder and
then switches the store's `CURRENT` pointer, so a crash never leaves a half-written current
artifact.

Layout of a store (one per model, or per model x pool index):

    <store>/versions/<version>/...        the files, plus meta.json
    <store>/versions/.staging-<version>/  a version being written (never read; removed on failure)
    <store>/CURRENT                       {"version": ..., "switched_at": ...}, replaced atomically

A version folder appears under its name only once complete (a directory rename), and the pointer
is a file replaced with os.replace: readers see the old version or the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.atomic import atomic_write

log = logging.getLogger(__name__)
POINTER = "CURRENT"
META = "meta.json"


class ArtifactError(RuntimeError):
    """A store has no current version, or the version asked for does not exist."""


@dataclass(frozen=True)
class Version:
    """One published version: its name, folder and metadata (meta.json)."""

    name: str
    path: Path
    meta: dict[str, Any]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def publish(store: Path, write: Callable[[Path], dict[str, Any]], meta: dict[str, Any] | None = None,
            make_current: bool = True) -> Version:
    """Write a new version with `write(folder) -> extra meta`, then (by default) make it current.

    The version folder is renamed into place only after `write` returns and meta.json is written;
    if anything fails, the staging folder is removed and the current version is untouched."""
    name = f"{_now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:4]}"  # sorts by creation time
    versions = Path(store) / "versions"
    staging = versions / f".staging-{name}"
    staging.mkdir(parents=True)
    try:
        extra = write(staging) or {}
        full = {**(meta or {}), **extra, "version": name, "created_at": _now().isoformat()}
        (staging / META).write_text(json.dumps(full, indent=2, default=str))
        staging.rename(versions / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    version = Version(name, versions / name, full)
    if make_current:
        switch(store, name)
    log.info("published %s version %s%s", store, name, " (current)" if make_current else "")
    return version


def annotate(store: Path, name: str, fields: dict[str, Any]) -> Version:
    """Merge `fields` into a version's meta.json (e.g. its evaluation), replaced atomically; the
    version's files are untouched."""
    version = load(store, name)
    meta = {**version.meta, **fields}
    atomic_write(version.path / META, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    return Version(name, version.path, meta)


def switch(store: Path, name: str) -> None:
    """Point CURRENT at an existing version (publish, or a rollback)."""
    if not (Path(store) / "versions" / name / META).exists():
        raise ArtifactError(f"{store}: no version {name!r}; versions: {[v.name for v in list_versions(store)]}")
    record = {"version": name, "switched_at": _now().isoformat()}
    atomic_write(Path(store) / POINTER, lambda tmp: tmp.write_text(json.dumps(record)))


def current(store: Path) -> Version | None:
    """The current version, or None before the first publish."""
    pointer = Path(store) / POINTER
    if not pointer.exists():
        return None
    name = json.loads(pointer.read_text())["version"]
    return load(store, name)


def require_current(store: Path) -> Version:
    """The current version; ArtifactError naming the store when there is none."""
    found = current(store)
    if found is None:
        raise ArtifactError(f"{store}: nothing published yet")
    return found


def load(store: Path, name: str) -> Version:
    """A version by name."""
    path = Path(store) / "versions" / name
    if not (path / META).exists():
        raise ArtifactError(f"{store}: no version {name!r}")
    return Version(name, path, json.loads((path / META).read_text()))


def list_versions(store: Path) -> list[Version]:
    """Every complete version, oldest first (staging folders are not versions)."""
    root = Path(store) / "versions"
    if not root.exists():
        return []
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / META).exists())
    return [load(store, n) for n in names]


def prune(store: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions (never the current one); return the names deleted."""
    cur = current(store)
    old = [v for v in list_versions(store)[:-keep] if cur is None or v.name != cur.name] if keep > 0 else []
    for v in old:
        shutil.rmtree(v.path)
    return [v.name for v in old]
