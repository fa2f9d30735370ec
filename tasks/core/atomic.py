"""Publishing files atomically: write aside, then rename, so a crash never leaves a half-written
file under its real name. On an object store (tasks.core.storage) the file is written locally and
uploaded in one request, which the store makes visible whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from tasks.core.storage import Location, is_remote


def atomic_write(path: Location, write: Callable[[Path], None]) -> None:
    """Call write(temp_path) beside `path` (or in a local temporary folder for an object store),
    then move the temporary file onto `path`."""
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="recpipe-upload-") as folder:
            tmp = Path(folder) / path.name
            write(tmp)
            path.fs.put_file(str(tmp), path.path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
