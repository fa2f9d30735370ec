"""Planted bugs of the full ranker (PLAYBOOK §3, §7): what a broken ranker's predictions look like,
for the distillation gate's tests and drills (`ranking.full.fault_injection`; "none" in production).

`inject(predictions, labels, kind, rng)` takes the ranker's (n, heads) probabilities and the
matching 0/1 labels and returns a new float32 array (the input is not modified):

| kind | what the bug does |
| --- | --- |
| none | nothing (a copy) |
| scaled_x3 | p * 3, clipped to 1 (a wrong temperature / a missing normalisation) |
| constant_half | every p = 0.5 (a dead model, a default value served) |
| shuffled | rows permuted (predictions joined to the wrong exposures) |
| nan_5pct | 5% of the values NaN (numerical blow-up, a failed feature lookup) |
| leaked_labels | p = 0.98 * y + 0.01 (the label leaked into the features) |
| shifted_0_2 | p + 0.2, clipped to [0, 1] (a wrong bias) |
"""

from __future__ import annotations

import numpy as np

from tasks.config import FAULTS


def inject(predictions: np.ndarray, labels: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The predictions with fault `kind` (one of tasks.config.FAULTS) planted; float32, same shape."""
    p = np.array(predictions, dtype=np.float32, copy=True)
    if kind == "none":
        return p
    if kind == "scaled_x3":
        return np.minimum(p * 3, 1).astype(np.float32)
    if kind == "constant_half":
        return np.full_like(p, 0.5)
    if kind == "shuffled":
        return p[rng.permutation(len(p))]
    if kind == "nan_5pct":
        flat = p.reshape(-1)  # a view of the copy
        flat[rng.choice(flat.size, size=round(0.05 * flat.size), replace=False)] = np.nan
        return p
    if kind == "leaked_labels":
        y = np.asarray(labels, dtype=np.float32)
        if y.shape != p.shape:
            raise ValueError(f"labels {y.shape} do not match predictions {p.shape}")
        return (0.98 * y + 0.01).astype(np.float32)
    if kind == "shifted_0_2":
        return np.clip(p + 0.2, 0, 1).astype(np.float32)
    raise ValueError(f"unknown fault {kind!r}; faults: {', '.join(FAULTS)}")
