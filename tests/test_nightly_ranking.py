"""Nightly ranking (docs/METHODS.md "Distillation set and gate") on a simulation: 10 consecutive clean nights (the last one
through the nightly_training DAG) raise no alert and distil every day; a re-run changes nothing;
the planted-bug drill: every listed fault is stopped by the GX gate, with an alert naming the
failed expectations and the data docs, and the gated pre-ranker stays at the clean level."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.core import artifacts, registry
from tasks.core.config import FAULTS, PlatformConfig, load_config
from tasks.core.warehouse import connect
from tasks.ops.alerts import read_alerts
from tasks.orchestration.local_airflow import run_dag_for_days, setup_metadata
from tasks.ranking import nightly
from tasks.ranking.distillation import gate_passed, load_scored
from tasks.ranking.fault_drill import drill
from tests.conftest import config_variant

pytestmark = pytest.mark.slow
FIRST_WINDOW = 4
NIGHTS = 10


@pytest.fixture(scope="module")
def nights(retrieval_sim: Path) -> Iterator[tuple[PlatformConfig, list[dt.date]]]:
    """The ranking part of 10 nights, evaluation days 5..14 of the 15-day simulation: 9 through
    the task functions, the 10th through the DAG."""
    # the ranking group only (the retrieval models' nights: tests/test_nightly_training.py)
    path = config_variant(retrieval_sim, "ranking", ranking={"full": {"first_window_days": FIRST_WINDOW}},
                          retrieval={"nightly_models": []})
    cfg = load_config(path)
    start = cfg.simulator.start_date
    days = [start + dt.timedelta(days=FIRST_WINDOW + n) for n in range(NIGHTS)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECPIPE_CONFIG", str(path))
        mp.delenv("RECPIPE_DATA_DIR", raising=False)
        for ds in days[:-1]:
            _night(cfg, ds)
        setup_metadata(cfg)
        run_dag_for_days("nightly_training", [days[-1]])
        yield cfg, days
    torch.set_num_threads(threads)


def _night(cfg: PlatformConfig, ds: dt.date) -> None:
    nightly.prepare(cfg, ds)
    nightly.score(cfg, ds)
    nightly.evaluate_full(cfg, ds)
    nightly.gate(cfg, ds)
    nightly.train_preranking(cfg, ds)
    nightly.train_full(cfg, ds)


def _gate_alerts(cfg: PlatformConfig) -> list[dict]:
    return [a for a in read_alerts(cfg) if a["source"] == "distillation_gate"]


def test_ten_clean_nights_raise_no_alert_and_distil_every_day(nights, record_property) -> None:
    cfg, days = nights
    assert _gate_alerts(cfg) == []
    assert all(gate_passed(cfg, d) for d in days)
    pre = artifacts.list_versions(registry.model_store(cfg, "preranking"))
    assert {v.meta["supervision"] for v in pre} == {"distilled"}
    full = artifacts.require_current(registry.model_store(cfg, "full_ranking"))
    assert full.meta["training_window"].endswith(str(days[-1]))
    with connect(cfg, read_only=True) as con:
        auc = con.execute(
            "select day, head, auc from ranking_eval where segment = 'all' order by day, head"
        ).df()
        docs = [r[0] for r in con.execute("select distinct data_docs from distillation_gate").fetchall()]
    assert len(auc.day.unique()) == NIGHTS and (auc.groupby("head").auc.mean() > 0.5).all()
    record_property("full_ranking_auc_mean_per_head", auc.groupby("head").auc.mean().round(4).to_dict())
    assert docs and all(Path(d).exists() for d in docs)


def test_a_rerun_of_a_night_changes_nothing(nights) -> None:
    cfg, days = nights
    stores = [registry.model_store(cfg, m) for m in ("full_ranking", "preranking")]
    before = [[v.name for v in artifacts.list_versions(s)] for s in stores]
    scored = load_scored(cfg, days[-1])
    _night(cfg, days[-1])
    assert [[v.name for v in artifacts.list_versions(s)] for s in stores] == before
    after = load_scored(cfg, days[-1])
    assert after.version.iloc[0] == scored.version.iloc[0]
    np.testing.assert_allclose(after.filter(like="p_").to_numpy(), scored.filter(like="p_").to_numpy(), rtol=1e-6)


def test_every_planted_bug_is_stopped_and_pre_ranking_stays_clean(nights, record_property) -> None:
    cfg, days = nights
    rows = drill(cfg, days[-2]).set_index("fault")
    record_property("drill", rows[["caught", "failed_expectations", "auc_gated", "auc_ungated"]].round(4).to_dict("index"))
    assert not rows.loc["none", "caught"]
    bugs = rows.drop("none")
    assert bugs.caught.all(), bugs[~bugs.caught]
    clean = rows.loc["none", "auc_gated"]
    assert (bugs.auc_gated >= bugs.auc_label_only - 1e-9).all() and (bugs.auc_gated > clean - 0.03).all()
    assert bugs.auc_ungated.min() < clean - 0.03  # what the gate saves pre-ranking from
    alerts = [a for a in _gate_alerts(cfg) if "drill:" in a["title"]]
    assert len(alerts) == len(FAULTS) - 1
    for alert in alerts:
        assert alert["details"]["failed_expectations"] and Path(alert["details"]["data_docs"]).exists()
    assert gate_passed(cfg, days[-2])  # the night's own verdict is untouched by the drill
