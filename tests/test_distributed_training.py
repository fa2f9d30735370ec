"""Data-parallel training (docs/SCALE.md "Training that streams"): two processes (torch.distributed,
gloo, DistributedDataParallel), each building the features of and encoding its share of every batch,
end with the parameters of one process on the same data and seed (several chunks, uneven shares)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pytest
import torch

from tasks.core import artifacts
from tasks.core.config import PlatformConfig, load_config
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import refresh_views
from tasks.ingest.load import load_dir
from tasks.ranking import full, pre
from tasks.ranking.data import build_exposures, load_exposures
from tasks.retrieval import two_tower
from tasks.retrieval.data import connect_read
from tasks.simulator import simulate
from tests.conftest import write_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

DAYS = 3
# Adam divides each update by the gradient's magnitude: a handful of near-zero gradient entries,
# summed in another order over two processes, move by up to ~1e-5; the rest agree to ~1e-7
MAX_ABS, MAX_RELATIVE = 1e-4, 1e-5


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """400 users x 3 simulated days with their ranking exposures; tiny models, small batches and
    chunks (several chunks per day, batches of odd sizes), one epoch."""
    tmp = tmp_path_factory.mktemp("distributed")
    cfg = load_config(write_config(
        tmp / "recpipe.yaml", tmp / "data", simulator={"days": DAYS},
        training={"read_batch_rows": 250},
        retrieval={"train_window_days": DAYS, "two_tower": {
            "dim": 8, "batch_size": 61, "first_epochs": 1, "random_negatives": 16, "hard_negatives": 2}},
        ranking={"full": {"embedding_dim": 4, "experts": 2, "expert_hidden": 8, "tower_hidden": 8,
                          "batch_size": 97, "first_epochs": 1, "first_window_days": DAYS},
                 "preranking": {"dim": 4, "batch_size": 83, "first_epochs": 1, "loss": "both"}},
    ))
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    run_dbt(cfg, ["run", "--select", "path:models/staging"])
    build_exposures(cfg, cfg.simulator.start_date, _last(cfg))
    return cfg


def _last(cfg: PlatformConfig) -> dt.date:
    return cfg.simulator.start_date + dt.timedelta(days=DAYS - 1)


def _with(cfg: PlatformConfig, processes: int) -> PlatformConfig:
    return cfg.model_copy(update={
        "training": cfg.training.model_copy(update={"processes": processes}),
        "paths": cfg.paths.model_copy(update={"artifacts": str(cfg.artifacts_dir.parent / f"artifacts-{processes}")}),
    })


def _preranking(cfg: PlatformConfig) -> artifacts.Version:
    with connect_read(cfg) as con:
        exposures = load_exposures(con, cfg.simulator.start_date, _last(cfg))
    teacher = np.random.default_rng(0).random((len(exposures), 7)).astype(np.float32)
    return pre.train(cfg, _last(cfg), exposures, teacher)


TRAIN: dict[str, Callable[[PlatformConfig], artifacts.Version]] = {
    "two_tower": lambda cfg: two_tower.train(cfg, _last(cfg)),
    "full_ranking": lambda cfg: full.train(cfg, _last(cfg)),
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
