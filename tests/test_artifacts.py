"""The versioned artifact store: publish switches CURRENT only after a version is complete; a
publish that fails halfway leaves the previous version current and nothing half-written; rollback
and pruning keep the pointer valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core import artifacts


def _weights(value: float):
    def write(folder: Path) -> dict:
        np.save(folder / "weights.npy", np.full(4, value))
        return {"value": value}

    return write


def test_publish_then_read_current(tmp_path: Path) -> None:
    store = tmp_path / "models" / "m"
    assert artifacts.current(store) is None
    v1 = artifacts.publish(store, _weights(1.0), {"window": "2026-01-01..2026-01-30"})
    cur = artifacts.require_current(store)
    assert cur.name == v1.name and cur.meta["value"] == 1.0 and cur.meta["window"].startswith("2026")
    assert np.load(cur.path / "weights.npy").tolist() == [1.0] * 4


def test_a_publish_that_fails_halfway_leaves_the_previous_version(tmp_path: Path) -> None:
    store = tmp_path / "m"
    v1 = artifacts.publish(store, _weights(1.0))

    def crash(folder: Path) -> dict:
        (folder / "weights.npy").write_bytes(b"\x93NUMPY half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        artifacts.publish(store, crash)
    assert artifacts.require_current(store).name == v1.name
    assert [v.name for v in artifacts.list_versions(store)] == [v1.name]
    assert not [p for p in (store / "versions").iterdir() if p.name.startswith(".")]


def test_candidate_rollback_and_prune(tmp_path: Path) -> None:
    store = tmp_path / "m"
    v1 = artifacts.publish(store, _weights(1.0))
    v2 = artifacts.publish(store, _weights(2.0), make_current=False)  # a candidate under evaluation
    assert artifacts.require_current(store).name == v1.name
    artifacts.switch(store, v2.name)
    assert artifacts.require_current(store).name == v2.name
    artifacts.switch(store, v1.name)  # rollback
    assert artifacts.require_current(store).name == v1.name
    with pytest.raises(artifacts.ArtifactError, match="no version"):
        artifacts.switch(store, "nope")
    v3 = artifacts.publish(store, _weights(3.0), make_current=False)
    assert artifacts.prune(store, keep=1) == [v2.name]  # v1 is current: kept
    assert [v.name for v in artifacts.list_versions(store)] == [v1.name, v3.name]


def test_models_cli_lists_and_rolls_back(platform, capsys: pytest.CaptureFixture) -> None:
    from tasks.cli import main
    from tasks.core.registry import model_store

    store = model_store(platform, "two_tower")
    v1 = artifacts.publish(store, _weights(1.0), {"training_window": "2026-01-01..2026-01-30"})
    v2 = artifacts.publish(store, _weights(2.0))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"* two_tower      {v2.name}" in out and f"  two_tower      {v1.name}" in out
    assert main(["models", "rollback", "--model", "two_tower", "--version", v1.name]) == 0
    assert artifacts.require_current(store).name == v1.name
