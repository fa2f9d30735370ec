"""Data-parallel training (docs/SCALE.md "Training that streams"): two processes (torch.distributed,
gloo, DistributedDataParallel), each building the features of and encoding its share of every batch,
end with the parameters of one process on the same data and seed (several chunks, uneven shares)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from tasks.core import artifacts
from tasks.core.config import RANKING_HEADS, PlatformConfig
from tasks.core.warehouse import replace_rows
from tasks.ranking import distillation, full, pre
from tasks.ranking.data import load_exposures
from tasks.retrieval import two_tower
from tasks.retrieval.data import connect_read
from tests.conftest import last_day, ranking_world

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

DAYS = 3
# Adam divides each update by the gradient's magnitude: a handful of near-zero gradient entries,
# summed in another order over two processes, move by up to ~1e-5; the rest agree to ~1e-7
MAX_ABS, MAX_RELATIVE = 1e-4, 1e-5


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """400 users x 3 simulated days with their ranking exposures; tiny models, small batches and
    chunks (several chunks per day, batches of odd sizes), one epoch."""
    return ranking_world(tmp_path_factory.mktemp("distributed"), simulator={"days": DAYS},
        training={"read_batch_rows": 250},
        retrieval={"train_window_days": DAYS, "two_tower": {
            "dim": 8, "batch_size": 61, "first_epochs": 1, "random_negatives": 16, "hard_negatives": 2}},
        ranking={"full": {"embedding_dim": 4, "experts": 2, "expert_hidden": 8, "tower_hidden": 8,
                          "batch_size": 97, "first_epochs": 1, "first_window_days": DAYS},
                 "preranking": {"dim": 4, "batch_size": 83, "first_epochs": 1, "loss": "both"}})


def _with(cfg: PlatformConfig, processes: int) -> PlatformConfig:
    return cfg.model_copy(update={
        "training": cfg.training.model_copy(update={"processes": processes}),
        "paths": cfg.paths.model_copy(update={"artifacts": str(cfg.artifacts_dir.parent / f"artifacts-{processes}")}),
    })


def _preranking(cfg: PlatformConfig) -> artifacts.Version:
    """Distilled from random predictions stored as the night stores its teacher."""
    first, last = cfg.simulator.start_date, last_day(cfg)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, first, last)
    p = np.random.default_rng(0).random((len(exposures), len(RANKING_HEADS))).astype(np.float32)
    for day in np.unique(exposures.day):
        rows = exposures.day == day
        replace_rows(cfg, distillation.TABLE, distillation.frame(day.astype(object), "random", exposures.select(rows),
                                                                 p[rows], "none"), ["day"])
    return pre.train(cfg, last, distillation.TABLE, first=first)


TRAIN: dict[str, Callable[[PlatformConfig], artifacts.Version]] = {
    "two_tower": lambda cfg: two_tower.train(cfg, last_day(cfg)),
    "full_ranking": lambda cfg: full.train(cfg, last_day(cfg)),
    "preranking": _preranking,
}


@pytest.mark.parametrize("model", list(TRAIN))
def test_two_processes_end_with_the_parameters_of_one(sim: PlatformConfig, model: str) -> None:
    one, two = (TRAIN[model](_with(sim, n)) for n in (1, 2))
    assert one.meta["examples"] == two.meta["examples"] > 2 * sim.training.read_batch_rows  # several chunks
    assert two.meta["loss_per_epoch"] == pytest.approx(one.meta["loss_per_epoch"], rel=1e-5)
    w1, w2 = (torch.load(v.path / "weights.pt", weights_only=True) for v in (one, two))
    assert w1.keys() == w2.keys()
    for name in w1:
        diff = (w1[name] - w2[name]).abs()
        assert diff.max() <= MAX_ABS, name
        assert torch.linalg.norm(diff) <= MAX_RELATIVE * torch.linalg.norm(w1[name]), name
    if model == "two_tower":
        for f in ("user_ids.npy", "item_ids.npy"):
            assert np.array_equal(np.load(one.path / f), np.load(two.path / f))
