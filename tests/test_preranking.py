"""Pre-ranking (docs/METHODS.md "Pre-ranker"): the distillation target and pairwise loss against hand computations,
vectorised pair sampling and group batches; on a simulation (train on days 11-13, evaluate AUC
per target on day 14): label-only beats chance, a good teacher does not hurt, a poisoned (shuffled)
teacher is worse than the clean one; aged training; determinism; meta."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch

from models.common.tables import Exposures
from models.ranking.pre import distillation_target, load_model, pairwise_loss, pointwise_loss
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig, load_config
from tasks.core.eval_metrics import auc
from tasks.ranking.data import TEACHER_COLUMNS, build_exposures, load_exposures
from tasks.ranking.pre import MODEL, evaluate, group_batches, group_keys, sample_pairs, score, train
from tasks.retrieval.data import connect_read
from tests.conftest import config_variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: fastest on one thread

# Small data (~10k exposures): smaller batches, more epochs and a higher rate than production's
# defaults, which give a handful of Adam steps here.
SMALL_DATA = {"batch_size": 256, "first_epochs": 4, "learning_rate": 0.01}
PRIOR = 20.0  # teacher smoothing: examples' worth of the overall rate


# --- hand computations ---------------------------------------------------------------------------


def test_pointwise_target_is_the_mean_of_label_and_teacher() -> None:
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.6, 0.3], [0.2, 0.9]])
    target = distillation_target(labels, teacher)
    assert target[0, 0].item() == pytest.approx(0.8)  # clicked, p = 0.6 -> 0.8
    assert target.flatten().tolist() == pytest.approx([0.8, 0.15, 0.1, 0.95])
    assert torch.equal(distillation_target(labels, None), labels)  # label-only fallback
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]])

    def bce(q: float, t: float) -> float:
        s = 1 / (1 + math.exp(-q))
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    hand = np.mean([bce(q, t) for q, t in zip(logits.flatten().tolist(), target.flatten().tolist())])
    assert pointwise_loss(logits, labels, teacher).item() == pytest.approx(hand, rel=1e-6)
    hand_y = np.mean([bce(q, t) for q, t in zip(logits.flatten().tolist(), labels.flatten().tolist())])
    assert pointwise_loss(logits, labels).item() == pytest.approx(hand_y, rel=1e-6)


def test_pairwise_loss_is_logistic_on_the_score_difference() -> None:
    one = math.log(1 + math.exp(-1))
    # q_i - q_j = 1 with p_i > p_j
    assert pairwise_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[1]])).item() == pytest.approx(one)
    # the same pair listed the other way round (order -1)
    reverse = pairwise_loss(torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[-1]]))
    assert reverse.item() == pytest.approx(one)
    # two targets: a tie is not counted; a wrongly ordered pair (q_i - q_j = -2) costs log(1 + e^2)
    q_first, q_second = torch.tensor([[2.0, 0.0], [0.5, 0.0]]), torch.tensor([[1.0, 2.0], [0.5, 3.0]])
    order = torch.tensor([[1, 1], [0, 0]])
    got = pairwise_loss(q_first, q_second, order).item()
    assert got == pytest.approx((one + math.log(1 + math.exp(2))) / 2)
    assert pairwise_loss(q_first, q_second, torch.zeros_like(order)).item() == 0.0


def test_pairs_stay_within_a_group_and_are_bounded() -> None:
    group = np.array([0, 0, 0, 0, 0, 1, 2, 2, 3, 3, 3])  # sizes 5, 1, 2, 3
    first, second = sample_pairs(group, per_group=4, rng=np.random.default_rng(0))
    assert (group[first] == group[second]).all() and (first != second).all()
    assert np.bincount(group[first], minlength=4).tolist() == [4, 0, 1, 3]  # min(4, c(c-1)/2)
    assert set(zip(first[group[first] == 2], second[group[first] == 2])) <= {(6, 7), (7, 6)}
    first, second = sample_pairs(np.zeros(4, np.int64), per_group=10**4, rng=np.random.default_rng(1))
    assert len(first) == 6 and (first != second).all()  # c(c-1)/2 draws, with replacement
    assert set(np.unique(np.r_[first, second])) <= {0, 1, 2, 3}


def test_group_batches_keep_groups_whole_and_days_in_order() -> None:
    day = np.repeat(np.array(["2026-01-02", "2026-01-01", "2026-01-01"], dtype="datetime64[D]"), [3, 4, 2])
    user = np.array([1, 2, 2, 1, 1, 3, 3, 1, 2])
    labels = np.zeros((9, len(RANKING_HEADS)), np.float32)
    exposures = Exposures(day, user, np.arange(9), np.arange(9), np.full(9, -1), labels)
    group = group_keys(exposures)
    assert len(np.unique(group)) == 5  # (day, user) pairs
    batches = list(group_batches(group, day, batch_size=3, rng=np.random.default_rng(0)))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(9))
    assert (np.diff(day[rows].astype(np.int64)) >= 0).all()  # oldest day first
    for b in batches:
        g = group[b]
        assert all(set(np.flatnonzero(group == x)) <= set(b) for x in g)  # whole groups
        runs = np.r_[True, g[1:] != g[:-1]].sum()
        assert runs == len(set(g.tolist()))  # each group's rows contiguous


# --- simulation ----------------------------------------------------------------------------------


class Sim(NamedTuple):
    cfg: PlatformConfig
    day: dict[int, dt.date]  # day number (1 = the first simulated day) -> date
    early: Exposures  # days 1-10 (the teacher's data)
    train: Exposures  # days 11-13
    test: Exposures  # day 14
    teacher: pd.DataFrame  # per exposure of `train`: smoothed item x user rates of days 1-10
    poisoned: pd.DataFrame  # its predictions shuffled over the rows


def teacher_rows(exposures: Exposures, p: np.ndarray) -> pd.DataFrame:
    """Predictions `p` (n, len(RANKING_HEADS)) of `exposures` as a teacher's rows."""
    rows = pd.DataFrame({"day": exposures.day, "user_id": exposures.user_id, "item_id": exposures.item_id})
    return rows.join(pd.DataFrame(p, columns=TEACHER_COLUMNS))


def _rates(history: Exposures, ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(len(keys), heads) smoothed rate of each head per id (history's column `ids`), toward the
    overall rate; the overall rate for an unseen id."""
    known, inverse = np.unique(ids, return_inverse=True)
    r0 = history.labels.mean(axis=0)
    n = np.bincount(inverse, minlength=len(known))[:, None]
    sums = np.stack([np.bincount(inverse, history.labels[:, h], len(known)) for h in range(len(RANKING_HEADS))], 1)
    rate = (sums + PRIOR * r0) / (n + PRIOR)
    pos = np.minimum(np.searchsorted(known, keys), len(known) - 1)
    return np.where((known[pos] == keys)[:, None], rate[pos], r0)


def good_teacher(history: Exposures, exposures: Exposures) -> np.ndarray:
    """An independent predictor: per head, the item's smoothed rate times the user's, over the
    overall rate (clipped to [0, 1]), from earlier days only."""
    r0 = np.maximum(history.labels.mean(axis=0), 1e-9)
    p = _rates(history, history.item_id, exposures.item_id) * _rates(history, history.user_id, exposures.user_id) / r0
    return np.clip(p, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def sim(retrieval_sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Sim:
    """The shared simulation with its own artifact store; ranking exposures of days 1-14."""
    cfg = load_config(config_variant(retrieval_sim, "preranking", tmp_path_factory.mktemp("preranking")))
    day = {n: cfg.simulator.start_date + dt.timedelta(days=n - 1) for n in range(1, 15)}
    build_exposures(cfg, day[1], day[14])
    with connect_read(cfg) as con:
        early, train_e, test_e = (load_exposures(con, day[a], day[b]) for a, b in ((1, 10), (11, 13), (14, 14)))
    teacher = good_teacher(early, train_e)
    poisoned = teacher[np.random.default_rng(0).permutation(len(teacher))]
    return Sim(cfg, day, early, train_e, test_e, teacher_rows(train_e, teacher), teacher_rows(train_e, poisoned))


def _variant(sim: Sim, store: str, **preranking: object) -> PlatformConfig:
    """The config with its own artifact store and pre-ranking settings overridden."""
    cfg = sim.cfg
    pr = cfg.ranking.preranking.model_copy(update={**SMALL_DATA, **preranking})
    return cfg.model_copy(update={
        "ranking": cfg.ranking.model_copy(update={"preranking": pr}),
        "paths": cfg.paths.model_copy(update={"artifacts": str(cfg.artifacts_dir.parent / store)}),
    })


@pytest.mark.slow
def test_distillation_auc_label_only_clean_and_poisoned_teacher(sim: Sim, record_property) -> None:
    """Label-only beats chance on every target; the clean teacher is at least as good as labels
    alone (up to a tolerance); the same teacher with its rows shuffled is worse than the clean
    one, pointwise and (much more so) pairwise."""
    targets = sim.cfg.ranking.preranking.targets
    cols = [RANKING_HEADS.index(t) for t in targets]
    teacher_test = good_teacher(sim.early, sim.test)
    teacher_auc = {t: round(auc(sim.test.label(t), teacher_test[:, c]), 4) for t, c in zip(targets, cols)}
    record_property("teacher_auc_day14", teacher_auc)
    results: dict[tuple[str, str], dict[str, float]] = {}
    for loss in ("pointwise", "pairwise"):
        for name, teacher in (("label_only", None), ("clean", sim.teacher), ("poisoned", sim.poisoned)):
            cfg = _variant(sim, f"artifacts-auc-{loss}-{name}", loss=loss)
            version = train(cfg, sim.day[13], teacher, first=sim.day[11])
            assert version.meta["supervision"] == ("label_only" if teacher is None else "distilled")
            results[loss, name] = evaluate(cfg, version, sim.test)
            record_property(f"auc_{loss}_{name}", {t: round(a, 4) for t, a in results[loss, name].items()})
    mean = {k: float(np.mean(list(v.values()))) for k, v in results.items()}
    record_property("mean_auc", {f"{a}_{b}": round(v, 4) for (a, b), v in mean.items()})
    label, clean, poisoned = (results["pointwise", n] for n in ("label_only", "clean", "poisoned"))
    assert all(label[t] > 0.53 for t in targets)
    assert all(clean[t] >= label[t] - 0.02 for t in targets)
    assert mean["pointwise", "clean"] > mean["pointwise", "poisoned"] + 0.02
    assert mean["pairwise", "clean"] > mean["pairwise", "poisoned"] + 0.05  # imitating a shuffle: ~chance
    assert mean["pairwise", "label_only"] > 0.55


@pytest.mark.slow
def test_cold_then_aged_training(sim: Sim) -> None:
    cfg = _variant(sim, "artifacts-aged")
    store = registry.model_store(cfg, MODEL)
    cold_rows = sim.train.day <= np.datetime64(sim.day[12], "D")
    cold = train(cfg, sim.day[12], sim.teacher, first=sim.day[11], make_current=True)
    assert artifacts.current(store).name == cold.name
    assert cold.meta["training_window"] == f"{sim.day[11]}..{sim.day[12]}" and cold.meta["warm_started_from"] is None
    assert cold.meta["epochs"] == SMALL_DATA["first_epochs"] and cold.meta["examples"] == int(cold_rows.sum())
    assert cold.meta["targets"] == list(cfg.ranking.preranking.targets) and cold.meta["loss"] == "pointwise"
    assert cold.meta["supervision"] == "distilled" and len(cold.meta["data_hash"]) == 64
    losses = cold.meta["loss_per_epoch"]
    assert len(losses) == SMALL_DATA["first_epochs"] and losses[0] > losses[-1]
    state = torch.load(cold.path / "weights.pt", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())

    aged = train(cfg, sim.day[13], None, first=sim.day[11])  # days 11-13 given: only day 13 is new
    day13 = sim.train.day == np.datetime64(sim.day[13], "D")
    assert aged.meta["warm_started_from"] == cold.name and aged.meta["epochs"] == 1
    assert aged.meta["training_window"] == f"{sim.day[13]}..{sim.day[13]}" and aged.meta["examples"] == int(day13.sum())
    assert aged.meta["supervision"] == "label_only" and aged.meta["teacher_mean"] is None
    assert artifacts.current(store).name == cold.name  # published, not current
    parent, parent_vocabs = load_model(cold.path)
    child, vocabs = load_model(aged.path)
    for kind, vocab in parent_vocabs.items():
        assert np.array_equal(vocabs[kind].ids[: len(vocab.ids)], vocab.ids)
    old_users = parent_vocabs["user"].ids
    active = np.isin(old_users, sim.train.user_id[day13])
    idle, moved = parent_vocabs["user"].rows(old_users[~active]), parent_vocabs["user"].rows(old_users[active])
    w_old, w_new = parent.emb["user"].weight.detach(), child.emb["user"].weight.detach()
    assert len(idle) and len(moved) and len(vocabs["user"]) > len(parent_vocabs["user"])
    assert torch.equal(w_new[idle], w_old[idle])
    assert not torch.isclose(w_new[moved], w_old[moved]).all(dim=1).any()
    probs = score(cfg, aged, sim.test)
    assert probs.shape == (len(sim.test), len(cfg.ranking.preranking.targets)) and probs.dtype == np.float32
    assert ((probs > 0) & (probs < 1)).all()
    artifacts.switch(store, aged.name)
    with pytest.raises(ValueError, match="aged training needs a later day"):
        train(cfg, sim.day[13], None)


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(sim: Sim) -> None:
    a, b, c = (train(_variant(sim, f"artifacts-det-{tag}", loss="both", seed=seed, first_epochs=1), sim.day[13],
                     sim.teacher, first=sim.day[11]) for tag, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert a.meta["data_hash"] == b.meta["data_hash"] == c.meta["data_hash"]
    assert a.meta["loss_per_epoch"] == b.meta["loss_per_epoch"] != c.meta["loss_per_epoch"]
    wa, wb = (torch.load(v.path / "weights.pt", weights_only=True) for v in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = _variant(sim, "artifacts-det-label", loss="both", seed=3, first_epochs=1)
    label_only = train(cfg, sim.day[13], None, first=sim.day[11])
    assert label_only.meta["data_hash"] != a.meta["data_hash"]  # the teacher is part of the training data


@pytest.mark.slow
def test_a_broken_teacher_is_refused(sim: Sim) -> None:
    """A teacher without a prediction for every exposure, with duplicated keys, or with NaN or
    out-of-range predictions (what the distillation gate stops) never reaches training."""
    cfg = _variant(sim, "artifacts-broken")
    good = sim.teacher
    target = f"p_{cfg.ranking.preranking.targets[0]}"
    broken = {
        "no prediction": good.iloc[5:],
        "duplicated": pd.concat([good, good.iloc[:3]]),
        "NaN": good.assign(**{target: np.where(np.arange(len(good)) == 7, np.nan, good[target])}),
        "out of range": good.assign(**{target: good[target] * 3 + 0.5}),
    }
    messages = {"no prediction": "have no prediction", "duplicated": "duplicated",
                "NaN": "(have no prediction|not finite probabilities)",  # DuckDB reads pandas' NaN as NULL
                "out of range": "not finite probabilities"}
    for name, rows in broken.items():
        with pytest.raises(ValueError, match=f"teacher .*{messages[name]}"):
            train(cfg, sim.day[13], rows, first=sim.day[11])
    assert not artifacts.list_versions(registry.model_store(cfg, MODEL))  # nothing published
    other = f"p_{next(h for h in RANKING_HEADS if h not in cfg.ranking.preranking.targets)}"
    version = train(cfg, sim.day[13], good.assign(**{other: np.nan}), first=sim.day[11])  # unused heads: no check
    assert version.meta["supervision"] == "distilled"
