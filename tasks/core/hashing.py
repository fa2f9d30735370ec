"""Stable hashing of integer ids (the same on every machine and run, independent of any seed)."""

from __future__ import annotations

import numpy as np


def splitmix64(values: np.ndarray, increment: int) -> np.ndarray:
    """uint64 splitmix64 of `values + increment` (wrapping): well-mixed bits for consecutive ids."""
    with np.errstate(over="ignore"):
        z = np.asarray(values, dtype=np.int64).astype(np.uint64) + np.uint64(increment)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
