"""The aged-model protocols of docs/METHODS.md "Aged-model protocols" for the full ranker (tasks/ranking/aged_protocols.py) on
the 15-day simulation: an aged model (cold through day 8 on days 5-8, then 1 epoch on each of
days 9, 10, 11), then `compare` (candidate vs current architecture from the same start on days
9-11, evaluated on day 12, embeddings reused and random) and `catch_up` (the candidate distilled
from the aged model). Checks: same start (same architecture -> identical AUCs), reused embeddings
equal the aged model's, distillation targets (y + p_old) / 2 by hand, the table's rows, the DAG.
Which arm wins is recorded, not asserted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from airflow.dag_processing.dagbag import DagBag

from models.common.features import build_vocabs
from models.ranking.full import load_model
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig, get_config, load_config
from tasks.core.warehouse import connect
from tasks.ops.notifier import RecpipeNotifier
from tasks.ranking import aged_protocols as ac
from tasks.ranking.data import build_exposures, load_exposures
from tasks.ranking.full import MODEL, load_sources, predict, train
from tasks.retrieval.data import connect_read
from tests.conftest import config_variant

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
CANDIDATE = {"experts": 2, "embedding_dim": 8}  # compare: a narrower, smaller MMoE
CATCH_UP = {"experts": 2}  # catch-up: same width, so the aged embeddings are reused


def _day(cfg: PlatformConfig, n: int) -> dt.date:
    return cfg.simulator.start_date + dt.timedelta(days=n - 1)


@pytest.fixture(scope="module")
def aged(retrieval_sim: Path) -> tuple[PlatformConfig, artifacts.Version]:
    """Config (own artifact store, 4-day cold window); the aged model: cold through day 8, then
    1 epoch on each of days 9, 10, 11, current in the registry."""
    cfg = load_config(config_variant(retrieval_sim, "architecture-comparison", ranking={"full": {"first_window_days": 4}}))
    torch.set_num_threads(1)
    build_exposures(cfg, _day(cfg, 5), _day(cfg, 13))
    for n in (8, 9, 10, 11):
        version = train(cfg, _day(cfg, n), make_current=True)
    assert version.meta["training_window"] == f"{_day(cfg, 11)}..{_day(cfg, 11)}"
    return cfg, version


@pytest.fixture(scope="module")
def runs(aged) -> dict[str, dict]:
    """The protocol runs on day 12 (training days 9-11), in this order (each rewrites its rows)."""
    cfg, _ = aged
    torch.set_num_threads(1)
    day12 = _day(cfg, 12)
    return {
        "same": ac.compare(cfg, day12, 3, "reuse", {}),
        "reuse": ac.compare(cfg, day12, 3, "reuse", CANDIDATE),
        "random": ac.compare(cfg, day12, 3, "random", CANDIDATE),
        "catch_up": ac.catch_up(cfg, day12, 3, CATCH_UP),
    }


def _record(record_property, name: str, summary: dict) -> None:
    record_property(name, {arm: {"mean_auc": round(v["mean_auc"], 4), **{h: round(a, 4) for h, a in v["auc"].items()}}
                           for arm, v in summary["arms"].items()})
    record_property(f"{name}_winner", summary["winner"])
    record_property(f"{name}_heads_compared", summary["heads_compared"])


def test_same_architecture_arms_start_and_end_identical(aged, runs, record_property) -> None:
    """Same start: with the candidate's architecture equal to the current one, the two arms are
    the same model (identical weights and AUCs)."""
    cfg, _ = aged
    same = runs["same"]
    _record(record_property, "compare_same_architecture", same)
    assert same["arms"]["current"]["auc"] == same["arms"]["candidate"]["auc"]
    assert same["winner"] == "tie"
    store = ac.experiment_store(cfg) / "compare"
    a, b = (artifacts.load(store / arm, same["arms"][arm]["version"]) for arm in ("current", "candidate"))
    wa, wb = (torch.load(v.path / "weights.pt", weights_only=True) for v in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compare_reuse_and_random(aged, runs, record_property) -> None:
    cfg, version = aged
    _record(record_property, "compare_reuse", runs["reuse"])
    _record(record_property, "compare_random", runs["random"])
    for mode in ("reuse", "random"):
        s = runs[mode]
        assert s["training_window"] == f"{_day(cfg, 9)}..{_day(cfg, 11)}" and s["day"] == str(_day(cfg, 12))
        assert s["winner"] in {"current", "candidate", "tie"} and s["heads_compared"]
        assert s["arms"]["candidate"]["architecture"]["embedding_dim"] == 8
        assert s["arms"]["aged"]["version"] == version.name  # the reference
        for arm in ("current", "candidate", "aged"):
            aucs = s["arms"][arm]["auc"]  # rare heads of a 1-epoch, 3-day model may sit near (or under) chance
            assert all(0 <= a <= 1 for a in aucs.values()) and aucs["click"] > 0.55, (mode, arm)
    # reuse: the current arm (same width) starts from the aged embeddings, the 8-wide candidate cannot
    assert runs["reuse"]["arms"]["current"]["embeddings_reused"]
    assert not runs["reuse"]["arms"]["candidate"]["embeddings_reused"]
    assert not runs["random"]["arms"]["current"]["embeddings_reused"]
    assert runs["reuse"]["arms"]["current"]["auc"] != runs["random"]["arms"]["current"]["auc"]
    # trained arms are throwaway versions: the registry's current is still the aged model
    assert artifacts.require_current(registry.model_store(cfg, MODEL)).name == version.name
    assert artifacts.current(ac.experiment_store(cfg) / "compare" / "current") is None


def test_reused_embeddings_start_equal_to_the_aged_model(aged, runs) -> None:
    cfg, version = aged
    old, old_vocabs = load_model(version.path)
    first, last = _day(cfg, 9), _day(cfg, 11)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, first, last)
        src = load_sources(con, first, last, cfg.ranking.full.history_days)
    vocabs = build_vocabs(src.catalogue, src.users, np.unique(exposures.user_id), old_vocabs)
    arch = ac.architecture(cfg.ranking.full, vocabs)
    start, reused = ac.start_model(arch, 7, old, old_vocabs, vocabs)
    again, _ = ac.start_model(arch, 7, old, old_vocabs, vocabs)
    random, not_reused = ac.start_model(arch, 7)
    assert reused and not not_reused
    known = old_vocabs["user"].ids
    row = int(old_vocabs["user"].rows(known[:1])[0])  # a user the aged model knows
    w = start.emb["user"].weight.detach()
    assert torch.equal(w[row], old.emb["user"].weight.detach()[row]) and w[row].abs().sum() > 0
    assert torch.equal(start.emb["position"].weight, old.emb["position"].weight)
    assert not torch.equal(random.emb["user"].weight[row], w[row])
    # dense layers: random, the same whatever the embeddings (and not the aged model's)
    s, r = start.state_dict(), random.state_dict()
    dense = [k for k in s if not k.startswith("emb.")]
    assert all(torch.equal(s[k], r[k]) and torch.equal(s[k], again.state_dict()[k]) for k in dense)
    assert not torch.equal(s["experts.0.0.0.weight"], old.state_dict()["experts.0.0.0.weight"])
    if len(vocabs["user"]) > len(old_vocabs["user"]):  # new ids: random rows
        assert w[len(old_vocabs["user"]):].abs().sum() > 0
    # after training: users of the aged vocabulary absent from days 9-11 keep the aged row exactly
    trained, _ = load_model(artifacts.load(ac.experiment_store(cfg) / "compare" / "current",
                                           runs["reuse"]["arms"]["current"]["version"]).path)
    idle = old_vocabs["user"].rows(known[~np.isin(known, exposures.user_id)])
    assert len(idle)
    assert torch.equal(trained.emb["user"].weight.detach()[idle], old.emb["user"].weight.detach()[idle])


def test_catch_up_distils_from_the_aged_model(aged, runs, record_property) -> None:
    cfg, version = aged
    s = runs["catch_up"]
    _record(record_property, "catch_up", s)
    assert set(s["arms"]) == {"candidate", "aged"} and s["winner"] in {"candidate", "aged", "tie"}
    assert s["arms"]["candidate"]["embeddings_reused"] and s["arms"]["candidate"]["architecture"]["experts"] == 2
    exposures, p_old = ac.teacher_predictions(cfg, _day(cfg, 12), 3)
    assert np.allclose(p_old, predict(cfg, version, exposures), atol=1e-6)  # the aged model's predictions
    targets = ac.distillation_targets(exposures.labels, p_old)
    click = RANKING_HEADS.index("click")
    picks = [int(np.flatnonzero(exposures.labels[:, click] == 1)[0]), int(np.flatnonzero(exposures.labels[:, click] == 0)[0])]
    for i in picks:
        for k in range(len(RANKING_HEADS)):
            y, p = float(exposures.labels[i, k]), float(p_old[i, k])
            assert targets[i, k] == pytest.approx((y + p) / 2, abs=1e-6)
    assert targets[picks[0], click] > 0.5 > targets[picks[1], click]
    cand = artifacts.load(ac.experiment_store(cfg) / "catch_up" / "candidate", s["arms"]["candidate"]["version"])
    assert cand.meta["distilled_from"] == version.name and cand.meta["examples"] == len(exposures)
    assert cand.meta["target_mean"] == pytest.approx(dict(zip(RANKING_HEADS, targets.mean(axis=0).tolist())), abs=1e-6)


def test_results_table(aged, runs) -> None:
    cfg, version = aged
    with connect(cfg, read_only=True) as con:
        rows = con.execute(f"select * from {ac.TABLE} order by protocol, arm, head").df()
    day12 = _day(cfg, 12)
    assert (rows.day.dt.date == day12).all() and (rows.days == 3).all()
    heads = set(RANKING_HEADS) | {ac.FUSION}
    # compare ran on day 12 twice with reused embeddings, then with random ones: the last run of
    # each kept, side by side
    assert set(rows[rows.protocol == "compare"].embeddings) == {"reuse", "random"}
    rows = rows[(rows.protocol != "compare") | (rows.embeddings == "random")]
    compare = rows[rows.protocol == "compare"]
    assert set(compare.arm) == {"current", "candidate", "aged"} and len(compare) == 3 * len(heads)
    assert all(json.loads(c) == CANDIDATE for c in compare.candidate_overrides)
    catch = rows[rows.protocol == "catch_up"]
    assert set(catch.arm) == {"candidate", "aged"} and len(catch) == 2 * len(heads)
    assert (catch.aged_version == version.name).all()
    for (protocol, arm), group in rows.groupby(["protocol", "arm"]):
        assert set(group["head"]) == heads
        summary = runs["random" if protocol == "compare" else "catch_up"]["arms"][arm]
        assert dict(zip(group["head"], group.auc.round(6))) == pytest.approx(summary["auc"])
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day12, day12)
    by_head = compare[compare.arm == "current"].set_index("head")
    assert (by_head.n == len(exposures)).all()
    assert by_head.positives[list(RANKING_HEADS)].tolist() == exposures.labels.sum(axis=0).astype(int).tolist()


def test_params_are_checked() -> None:
    cfg = get_config()
    ok = ac.resolve_params(cfg, {"day": "2026-01-12", "candidate": '{"experts": 2}', "protocol": "catch_up"})
    assert ok == {"day": "2026-01-12", "days": cfg.ranking.architecture_comparison.days, "embeddings": "reuse",
                  "candidate": {"experts": 2}, "protocol": "catch_up"}
    for bad in ({}, {"day": "2026-01-12", "candidate": {"dropout": 0.1}},
                {"day": "2026-01-12", "candidate": {"experts": 0}}, {"day": "2026-01-12", "protocol": "race"},
                {"day": "2026-01-12", "embeddings": "zero"}, {"day": "2026-01-12", "days": -1}):
        with pytest.raises(ValueError):
            ac.resolve_params(cfg, bad)


def test_dag_imports_cleanly_with_its_params() -> None:
    cfg = get_config()
    bag = DagBag(dag_folder=str(Path(ac.__file__).resolve().parents[2] / "dags" / "architecture_comparison.py"),
                 known_pools={"default_pool", cfg.airflow.warehouse_pool})
    assert bag.import_errors == {}
    dag = bag.dags["architecture_comparison"]
    assert dag.schedule is None and "recpipe" in dag.tags
    assert set(dag.params.keys()) == {"day", "days", "embeddings", "candidate", "protocol"}
    assert dag.params["days"] == cfg.ranking.architecture_comparison.days
    assert dag.params["embeddings"] == "reuse" and dag.params["protocol"] == "compare"
    assert isinstance(dag.on_failure_callback, RecpipeNotifier) or any(
        isinstance(cb, RecpipeNotifier) for cb in dag.on_failure_callback)
    assert {t.task_id for t in dag.tasks} == {"prepare", "run"}
    for t in dag.tasks:
        assert t.pool == cfg.airflow.warehouse_pool and t.pool_slots == 1
        assert t.owner == cfg.airflow.owner and t.retries == cfg.airflow.retries
