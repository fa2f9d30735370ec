"""Quiet long commands: the full logs of Airflow, dbt and the tasks go to a log file, the terminal
gets one progress line per step (`progress`); `--verbose` keeps the logs on the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_TERMINALS: list[TextIO] = []  # the terminal streams of the active logs_to_file blocks, innermost last


def terminal() -> TextIO:
    """The terminal stream (for a progress bar), also while the logs go to a file."""
    return _TERMINALS[-1] if _TERMINALS else sys.stdout


def progress(line: str) -> None:
    """Write one progress line to the terminal, also while the logs go to a file."""
    stream = terminal()
    stream.write(line + "\n")
    stream.flush()


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[TextIO]:
    """Inside, file descriptors 1 and 2 (so every print, logging handler and child process) write to
    `path` (appended); yields a stream to the terminal for the progress lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    stream = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    _TERMINALS.append(stream)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield stream
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            _TERMINALS.remove(stream)
            stream.close()


@contextlib.contextmanager
def quiet(path: Path, verbose: bool = False) -> Iterator[None]:
    """A long command's body: its logs go to `path` (named on the terminal at the end) unless
    `verbose`, when they stay on the terminal."""
    if verbose:
        yield
        return
    try:
        with logs_to_file(path):
            yield
    finally:
        progress(f"full logs: {path}")
