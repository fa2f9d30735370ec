"""Where the lake, the artifacts and the reports live: a local folder, or an fsspec URL such as
`s3://bucket/prefix` (docs/SCALE.md "Object storage").

A local folder is a `pathlib.Path`; a URL is a `UPath` (universal_pathlib, as Airflow's object
storage uses) carrying the filesystem's options, with the same `/`, `glob`, `exists`,
`read_text` and `write_text`. What differs on an object store is handled here, once:

- an object store has no rename, but a single upload is atomic (the object appears whole or not
  at all), so `tasks.core.atomic.atomic_write` writes a local temporary file and uploads it;
- it has no empty folders, so removing one is a no-op;
- pyarrow and DuckDB reach it through its fsspec filesystem (`read_parquet`,
  `register_filesystems`, `dbt_filesystems` for dbt-duckdb's profile);
- files that libraries need on local disk (model weights, faiss indexes) are copied down by
  `download_folder` (tasks.core.artifacts keeps a cache of immutable versions).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.utils import get_protocol
from pyarrow.fs import FSSpecHandler, PyFileSystem
from upath import UPath

Location = Path | UPath
FILESYSTEMS_ENV = "RECPIPE_FILESYSTEMS"  # dbt/profiles.yml: the fsspec filesystems of the duckdb target


def is_url(spec: str) -> bool:
    """Whether a configured location is a URL (`protocol://...`) rather than a local path."""
    return "://" in spec and not spec.startswith("file://")


def location(spec: str, root: Path, options: Mapping[str, Mapping[str, Any]]) -> Location:
    """A configured location: a URL with its protocol's options (`paths.storage_options`), an
    absolute path, or a path under `root`."""
    if is_url(spec):
        return UPath(spec, **dict(options.get(get_protocol(spec), {})))
    path = Path(spec.removeprefix("file://"))
    return path if path.is_absolute() else root / path


def is_remote(path: Location) -> bool:
    """Whether `path` is on an object store (not a local file)."""
    return isinstance(path, UPath) and not isinstance(path, Path)


def remove_dir_if_empty(path: Location) -> None:
    """Remove an emptied folder (an object store has none to remove)."""
    if not is_remote(path) and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def remove_tree(path: Location) -> None:
    """Delete a folder and everything under it."""
    if is_remote(path):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
        return
    shutil.rmtree(path, ignore_errors=True)


def _arrow_fs(path: UPath) -> PyFileSystem:
    return PyFileSystem(FSSpecHandler(path.fs))


def read_parquet(path: Location, **options: Any) -> pa.Table:
    """A Parquet file as an Arrow table (`options` as pyarrow.parquet.read_table's)."""
    if is_remote(path):
        return pq.read_table(path.path, filesystem=_arrow_fs(path), **options)
    return pq.read_table(path, **options)


def parquet_rows(path: Location) -> int:
    """The row count in a Parquet file's footer."""
    if is_remote(path):
        with path.open("rb") as f:
            return pq.read_metadata(f).num_rows
    return pq.read_metadata(path).num_rows


def register_filesystems(con: duckdb.DuckDBPyConnection, paths: Iterable[Location]) -> None:
    """Let DuckDB read the object stores of `paths` (e.g. the lake's views) through fsspec."""
    seen = set()
    for path in paths:
        if is_remote(path) and path.protocol not in seen:
            seen.add(path.protocol)
            con.register_filesystem(path.fs)


def dbt_filesystems(paths: Iterable[Location]) -> dict[str, str]:
    """The environment that makes dbt-duckdb register the object stores of `paths` (its profile's
    `filesystems`: one fsspec spec per protocol)."""
    specs = {p.protocol: {"fs": p.protocol, **p.storage_options} for p in paths if is_remote(p)}
    return {FILESYSTEMS_ENV: json.dumps(list(specs.values()))}


def upload_folder(local: Path, remote: UPath, last: str | None = None) -> None:
    """Upload every file under `local` to `remote`, the file named `last` after all others (a
    reader that waits for it never sees a partial folder)."""
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == last, p))
    for f in files:
        remote.fs.put_file(str(f), f"{remote.path}/{f.relative_to(local).as_posix()}")


def download_folder(remote: UPath, local: Path) -> None:
    """Copy every file under `remote` into `local` (created), keeping the folder layout."""
    local.mkdir(parents=True, exist_ok=True)
    prefix = remote.path.rstrip("/") + "/"
    for name in remote.fs.find(remote.path):
        target = local / name.removeprefix(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        remote.fs.get_file(name, str(target))


def cache_root() -> Path:
    """Local copies of remote artifacts: $RECPIPE_CACHE_DIR, else ~/.cache/recpipe."""
    env = os.environ.get("RECPIPE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "recpipe"
