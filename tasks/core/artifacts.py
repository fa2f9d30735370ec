"""Versioned artifacts (model weights, ANN indexes): every publish writes a new version folder and
then switches the store's `CURRENT` pointer, so a crash never leaves a half-written current
artifact.

Layout of a store (one per model, or per model x pool index):

    <store>/versions/<version>/...        the files, plus meta.json
    <store>/versions/.staging-<version>/  a version being written (never read; removed on failure)
    <store>/CURRENT                       {"version": ..., "switched_at": ...}, replaced atomically

A version folder appears under its name only once complete (a directory rename), and the pointer
is a file replaced with os.replace: readers see the old version or the new one, never a mix.

A store may be on an object store (`paths.artifacts: s3://...`, tasks.core.storage). A version is
then written in a local staging folder and uploaded with meta.json last (a version exists once its
meta.json does), then the pointer object is replaced in one upload. Versions never change but for
their meta.json (`annotate`), so readers keep a local copy of each version's files in the cache
(tasks.core.storage.cache_root) and always read meta.json from the store.
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
from tasks.core.storage import Location, cache_root, download_folder, is_remote, remove_tree, upload_folder

log = logging.getLogger(__name__)
POINTER = "CURRENT"
META = "meta.json"


class ArtifactError(RuntimeError):
    """A store has no current version, or the version asked for does not exist."""


@dataclass(frozen=True)
class Version:
    """One published version: its name, store and metadata (meta.json)."""

    name: str
    store: Location
    meta: dict[str, Any]

    @property
    def path(self) -> Path:
        """The version's folder on local disk (a remote version's files are copied down once)."""
        return _local_copy(self.store, self.name) if is_remote(self.store) else self.store / "versions" / self.name


def _root(store: Location | str) -> Location:
    return store if is_remote(store) else Path(store)


def _local_versions(store: Location) -> Path:
    """Where a store's versions are on local disk: the store's own folder, or its cache."""
    if is_remote(store):
        return cache_root() / "artifacts" / store.protocol / store.path.strip("/") / "versions"
    return Path(store) / "versions"


def _local_copy(store: Location, name: str) -> Path:
    """A remote version's local copy, downloaded into a hidden folder and renamed into place once
    complete (a concurrent reader's copy is as good: the first rename wins)."""
    local = _local_versions(store) / name
    if not local.exists():
        part = local.with_name(f".download-{name}-{uuid.uuid4().hex[:6]}")
        download_folder(store / "versions" / name, part)
        try:
            part.rename(local)
        except OSError:
            shutil.rmtree(part, ignore_errors=True)
            if not local.exists():
                raise
    return local


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def publish(store: Location, write: Callable[[Path], dict[str, Any]], meta: dict[str, Any] | None = None,
            make_current: bool = True) -> Version:
    """Write a new version with `write(folder) -> extra meta`, then (by default) make it current.

    The version folder is renamed into place (uploaded, meta.json last) only after `write` returns
    and meta.json is written; if anything fails, the staging folder is removed and the current
    version is untouched."""
    store = _root(store)
    name = f"{_now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:4]}"  # sorts by creation time
    versions = _local_versions(store)
    staging = versions / f".staging-{name}"
    staging.mkdir(parents=True)
    try:
        extra = write(staging) or {}
        full = {**(meta or {}), **extra, "version": name, "created_at": _now().isoformat()}
        (staging / META).write_text(json.dumps(full, indent=2, default=str))
        if is_remote(store):
            upload_folder(staging, store / "versions" / name, last=META)
        staging.rename(versions / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if is_remote(store):
            remove_tree(store / "versions" / name)
        raise
    version = Version(name, store, full)
    if make_current:
        switch(store, name)
    log.info("published %s version %s%s", store, name, " (current)" if make_current else "")
    return version


def annotate(store: Location, name: str, fields: dict[str, Any]) -> Version:
    """Merge `fields` into a version's meta.json (e.g. its evaluation), replaced atomically; the
    version's files are untouched."""
    version = load(store, name)
    meta = {**version.meta, **fields}
    atomic_write(version.store / "versions" / name / META,
                 lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    return Version(name, version.store, meta)


def switch(store: Location, name: str) -> None:
    """Point CURRENT at an existing version (publish, or a rollback)."""
    store = _root(store)
    if not (store / "versions" / name / META).exists():
        raise ArtifactError(f"{store}: no version {name!r}; versions: {[v.name for v in list_versions(store)]}")
    record = {"version": name, "switched_at": _now().isoformat()}
    atomic_write(store / POINTER, lambda tmp: tmp.write_text(json.dumps(record)))


def current(store: Location) -> Version | None:
    """The current version, or None before the first publish."""
    pointer = _root(store) / POINTER
    if not pointer.exists():
        return None
    name = json.loads(pointer.read_text())["version"]
    return load(store, name)


def require_current(store: Location) -> Version:
    """The current version; ArtifactError naming the store when there is none."""
    found = current(store)
    if found is None:
        raise ArtifactError(f"{store}: nothing published yet")
    return found


def load(store: Location, name: str) -> Version:
    """A version by name."""
    store = _root(store)
    meta = store / "versions" / name / META
    if not meta.exists():
        raise ArtifactError(f"{store}: no version {name!r}")
    return Version(name, store, json.loads(meta.read_text()))


def list_versions(store: Location) -> list[Version]:
    """Every complete version, oldest first (staging folders are not versions)."""
    root = _root(store) / "versions"
    if not root.exists():
        return []
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / META).exists())
    return [load(store, n) for n in names]


def prune(store: Location, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions (never the current one); return the names deleted."""
    cur = current(store)
    old = [v for v in list_versions(store)[:-keep] if cur is None or v.name != cur.name] if keep > 0 else []
    for v in old:
        remove_tree(v.store / "versions" / v.name)
        if is_remote(v.store):
            shutil.rmtree(_local_versions(v.store) / v.name, ignore_errors=True)
    return [v.name for v in old]
