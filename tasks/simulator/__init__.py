"""The built-in simulator: a generative model of a UGC short-video app that writes the raw event
contract day by day, with its latent ground truth kept apart.

Modules: world (latent state and its growth), behaviour (the behaviour model), exposure (pluggable
feed policies), day (one day's step), events and tables (layout as contract rows), output
(writing, ground-truth reader), state (daily snapshots), run (the entry points).
"""

from tasks.simulator.day import SatisfactionShift
from tasks.simulator.exposure import (
    EXPOSURE_POLICIES,
    ExposureContext,
    ExposurePolicy,
    Served,
    get_policy,
    register_policy,
)
from tasks.simulator.output import landing_path, read_ground_truth, truth_path
from tasks.simulator.run import DaySummary, SimulationSummary, simulate, simulate_day, with_overrides

__all__ = [
    "EXPOSURE_POLICIES",
    "DaySummary",
    "ExposureContext",
    "ExposurePolicy",
    "SatisfactionShift",
    "Served",
    "SimulationSummary",
    "get_policy",
    "landing_path",
    "read_ground_truth",
    "register_policy",
    "simulate",
    "simulate_day",
    "truth_path",
    "with_overrides",
]
