"""Two-tower retrieval (docs/METHODS.md "Two-tower"): the logQ-corrected sampled softmax against a hand
computation, vocabulary extension, cold then aged (warm) training published as versions, the
retriever, and logQ vs no logQ on a simulation (train through day 14, evaluate on day 15)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from models.common.features import build_vocabs
from models.common.tables import Catalogue, Events, UserTable
from models.common.vocab import Vocab
from models.retrieval.retriever import Popularity
from models.retrieval.two_tower import TwoTower, extend_model, load_model, sampled_softmax_loss
from models.retrieval.two_tower_data import batches, training_set
from models.retrieval.two_tower_retriever import TwoTowerRetriever
from tasks.core import artifacts, registry
from tasks.core import eval_metrics as m
from tasks.core.config import PlatformConfig, load_config
from tasks.core.warehouse import refresh_views
from tasks.ingest.load import load_dir
from tasks.retrieval.data import connect_read, load_catalogue, load_events
from tasks.retrieval.two_tower import MODEL, batch_loss, load_users, train
from tasks.simulator import simulate
from tests.conftest import write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: fastest on one thread

START = dt.date(2026, 1, 1)
DAY14, DAY15 = START + dt.timedelta(days=13), START + dt.timedelta(days=14)
K = 50


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """2,000 users x 15 days simulated and loaded."""
    tmp = tmp_path_factory.mktemp("two-tower")
    simulator = {"users": 2000, "items": 1500, "days": 15}
    cfg = load_config(write_config(tmp / "recpipe.yaml", tmp / "data", simulator=simulator))
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    return cfg


def _variant(cfg: PlatformConfig, artifacts_dir: str, **two_tower: object) -> PlatformConfig:
    """The config with its own artifact store and two-tower settings overridden."""
    tt = cfg.retrieval.two_tower.model_copy(update=two_tower)
    return cfg.model_copy(update={
        "retrieval": cfg.retrieval.model_copy(update={"two_tower": tt}),
        "paths": cfg.paths.model_copy(update={"artifacts": artifacts_dir}),
    })


def _window(cfg: PlatformConfig, day: dt.date) -> tuple[Catalogue, Events]:
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, day)
        first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
        return catalogue, load_events(con, catalogue, cfg.retrieval.positive_event, first, day)


def _hand_loss(u, v, rows, log_q, tau, hard=None, hard_rows=None) -> float:
    """Mean over users i of -log softmax: logit_ij = u_i.v_j / tau - log_q_j over the candidates,
    skipping j != i with the same item as i's positive, plus uncorrected valid hard negatives."""
    total = 0.0
    for i in range(len(u)):
        logits = [u[i] @ v[j] / tau - log_q[j] for j in range(len(v)) if j == i or rows[j] != rows[i]]
        if hard is not None:
            logits += [u[i] @ h / tau for h, r in zip(hard[i], hard_rows[i]) if r >= 0 and r != rows[i]]
        total += np.log(np.sum(np.exp(logits))) - (u[i] @ v[i] / tau - log_q[i])
    return total / len(u)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_logq_loss_equals_a_hand_computation() -> None:
    rng = np.random.default_rng(0)
    u, v = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(5, 4)))  # 3 positives + 2 random
    rows = np.array([5, 7, 5, 9, 7])  # users 0 and 2 share item 5; random negative 4 is user 1's item
    log_q = np.log(np.array([2 / 3, 1 / 3, 2 / 3, 0.2, 0.1]))
    hard, hard_rows = _unit(rng.normal(size=(3, 2, 4))), np.array([[8, -1], [7, 3], [4, 4]])
    t = {name: torch.tensor(a, dtype=torch.float32) for name, a in (("u", u), ("v", v), ("q", log_q), ("h", hard))}
    pos, cand = torch.tensor(rows[:3]), torch.tensor(rows)
    got = sampled_softmax_loss(t["u"], pos, t["v"], cand, 0.1, t["q"], t["h"], torch.tensor(hard_rows))
    assert got.item() == pytest.approx(_hand_loss(u, v, rows, log_q, 0.1, hard, hard_rows), rel=1e-5)
    plain = sampled_softmax_loss(t["u"], pos, t["v"][:3], cand[:3], 0.1)
    assert plain.item() == pytest.approx(_hand_loss(u, v[:3], rows[:3], np.zeros(3), 0.1), rel=1e-5)


def _tiny() -> tuple[Events, Catalogue, UserTable]:
    """4 items, 3 users, 6 clicks over 2 days (item 10 clicked 3 times)."""
    catalogue = Catalogue(
        item_id=np.array([10, 11, 12, 13]), author_id=np.array([1, 1, 2, 3]),
        category_l1=np.array([0, 0, 1, 1], np.int32), category_l2=np.array([0, 1, 2, 2], np.int32),
        content_cluster=np.array([0, 1, 2, 3], np.int32), publish_us=np.zeros(4, np.int64),
        l1_names=("a", "b"), l2_names=("a1", "a2", "b1"),
    )
    day = np.array(["2026-01-01"] * 3 + ["2026-01-02"] * 3, dtype="datetime64[D]")
    events = Events(np.array([1, 2, 3, 1, 2, 3]), np.array([0, 0, 1, 2, 0, 3]), np.arange(6) * 1_000_000, day)
    users = UserTable(np.array([1, 2, 3]), np.array(["f", "m", "u"]), np.array(["18-24", "25-34", "<18"]),
                      np.array([1, 2, 0]))
    return events, catalogue, users


def test_in_batch_log_q_is_the_items_share_of_training_positives() -> None:
    events, catalogue, users = _tiny()
    vocabs = build_vocabs(catalogue, users, users.user_id)
    data = training_set(events, dt.date(2026, 1, 1), vocabs, catalogue, users, sequence_length=2)
    torch.manual_seed(0)
    model = TwoTower({k: len(v) for k, v in vocabs.items()}, dim=4)
    batch = next(batches(data, batch_size=len(events), rng=np.random.default_rng(0)))
    share = np.bincount(events.item, minlength=4) / len(events)
    items = batch.items.numpy()
    assert np.allclose(np.exp(batch.log_q.numpy()), len(items) * share[items])  # expected count = B * p_j
    with torch.no_grad():
        u = model.encode_users(batch.users, batch.seq).numpy()
        v = model.encode_items(batch.features).numpy()
        got = batch_loss(model, batch, 0.05, logq_correction=True).item()
    assert got == pytest.approx(_hand_loss(u, v, items, np.log(share[items]), 0.05), rel=1e-5)
    assert data.seq[events.ts_us.tolist().index(3_000_000)].tolist() == [vocabs["item"].rows(np.array([10]))[0], 0]


def test_negatives_random_by_popularity_and_hard_from_unclicked_impressions() -> None:
    events, catalogue, users = _tiny()
    vocabs = build_vocabs(catalogue, users, users.user_id)
    shown = Events(np.array([1, 1, 2]), np.array([1, 3, 2]), np.zeros(3, np.int64), events.day[:3])  # user 3: none
    data = training_set(events, dt.date(2026, 1, 1), vocabs, catalogue, users, 2, unclicked=shown)
    batch = next(batches(data, 6, np.random.default_rng(0), random_negatives=50, hard_negatives=4))
    negatives = batch.items[6:].numpy()
    assert set(negatives) <= {0, 1, 2, 3} and (negatives == 0).sum() > (negatives == 1).sum()  # 3 clicks vs 1
    q = np.bincount(events.item, minlength=4) ** 0.75
    expected = np.bincount(events.item, minlength=4) + 50 * q / q.sum()  # B p_j + R q_j, B = 6
    assert np.allclose(batch.log_q.numpy(), np.log(expected[batch.items.numpy()]), atol=1e-6)
    allowed = {1: {1, 3}, 2: {2}, 3: {-1}}
    for row, hard in zip(batch.users[:, 0].numpy(), batch.hard_items.numpy()):
        assert set(hard.tolist()) <= allowed[vocabs["user"].ids[row - 1]]


def test_vocabulary_extension_keeps_old_rows() -> None:
    old = Vocab.build(np.array([30, 10, 20]))
    new = old.extend(np.array([20, 5, 40, 5]))
    assert old.rows(np.array([10, 20, 30, 99])).tolist() == [1, 2, 3, 0]
    assert new.rows(np.array([10, 20, 30, 5, 40, 99])).tolist() == [1, 2, 3, 4, 5, 0]
    names = Vocab.build(np.array(["m", "f"])).extend(np.array(["u", "f"]))
    assert names.rows(np.array(["f", "m", "u", "x"])).tolist() == [1, 2, 3, 0]
    events, catalogue, users = _tiny()
    vocabs = build_vocabs(catalogue, users, np.array([1, 2]))
    torch.manual_seed(0)
    before = TwoTower({k: len(v) for k, v in vocabs.items()}, dim=4)
    bigger = build_vocabs(catalogue, users, np.array([3, 1]), base=vocabs)
    assert bigger["user"].ids.tolist() == [1, 2, 3]
    after = extend_model(before, vocabs, bigger, dim=4)
    assert torch.equal(after.emb["user"].weight[:3], before.emb["user"].weight)
    assert after.emb["user"].weight.shape[0] == 4 and after.emb["user"].weight[3].abs().sum() > 0
    assert torch.equal(after.user_mlp[0].weight, before.user_mlp[0].weight)


@pytest.mark.slow
def test_cold_then_warm_start(sim: PlatformConfig) -> None:
    cfg = _variant(sim, "artifacts-warm")
    store = registry.model_store(cfg, MODEL)
    cold = train(cfg, DAY14)
    assert artifacts.current(store) is None  # published, not current: the DAG switches after evaluation
    catalogue, window = _window(cfg, DAY14)
    first = (DAY14 - dt.timedelta(days=cfg.retrieval.train_window_days - 1)).isoformat()
    assert cold.meta["warm_started_from"] is None and cold.meta["training_window"] == f"{first}..{DAY14}"
    assert cold.meta["epochs"] == 3 and cold.meta["examples"] == len(window)
    losses = cold.meta["loss_per_epoch"]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert len(cold.meta["data_hash"]) == 64
    state = torch.load(cold.path / "weights.pt", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    assert np.load(cold.path / "item_ids.npy").tolist() == catalogue.item_id.tolist()
    assert np.load(cold.path / "user_ids.npy").tolist() == np.unique(window.user_id).tolist()
    vectors = np.load(cold.path / "item_vectors.npy")
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    artifacts.switch(store, cold.name)
    warm = train(cfg, DAY15)
    with connect_read(cfg) as con:
        day15 = load_events(con, load_catalogue(con, DAY15), "click", DAY15, DAY15)
    assert warm.meta["warm_started_from"] == cold.name and warm.meta["epochs"] == 1
    assert warm.meta["training_window"] == f"{DAY15}..{DAY15}" and warm.meta["examples"] == len(day15)
    assert [v.name for v in artifacts.list_versions(store)] == [cold.name, warm.name]
    parent, parent_vocabs = load_model(cold.path)
    child, vocabs = load_model(warm.path)
    for kind, vocab in parent_vocabs.items():
        assert np.array_equal(vocabs[kind].ids[: len(vocab.ids)], vocab.ids)
    # Rows of known users absent from the new day are the parent's exactly (no gradient, fresh
    # Adam state); rows of users who clicked that day moved from the parent's.
    old_users = parent_vocabs["user"].ids
    idle = parent_vocabs["user"].rows(old_users[~np.isin(old_users, day15.user_id)])
    active = parent_vocabs["user"].rows(old_users[np.isin(old_users, day15.user_id)])
    w_old, w_new = parent.emb["user"].weight.detach(), child.emb["user"].weight.detach()
    assert len(idle) and len(active) and len(vocabs["user"]) > len(parent_vocabs["user"])
    assert torch.equal(w_new[idle], w_old[idle])
    assert not torch.isclose(w_new[active], w_old[active]).all(dim=1).any()


@pytest.mark.slow
def test_training_is_deterministic(sim: PlatformConfig) -> None:
    a = train(_variant(sim, "artifacts-det-a", first_epochs=1, hard_negatives=2, random_negatives=64), DAY14)
    b = train(_variant(sim, "artifacts-det-b", first_epochs=1, hard_negatives=2, random_negatives=64), DAY14)
    assert a.meta["data_hash"] == b.meta["data_hash"] and a.meta["loss_per_epoch"] == b.meta["loss_per_epoch"]
    wa, wb = (torch.load(v.path / "weights.pt", weights_only=True) for v in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert np.array_equal(np.load(a.path / "user_vectors.npy"), np.load(b.path / "user_vectors.npy"))


@pytest.mark.slow
def test_retriever_excludes_seen_items_and_handles_unknown_users(sim: PlatformConfig) -> None:
    cfg = _variant(sim, "artifacts-retriever", first_epochs=1)
    version = train(cfg, DAY14)
    catalogue, window = _window(cfg, DAY14)
    with connect_read(cfg) as con:
        users = load_users(con, DAY15)
    exported = np.load(version.path / "user_ids.npy")
    newcomer = users.user_id[~np.isin(users.user_id, exported)][-1]  # features only, no positives
    ids = np.concatenate([exported[:50], [newcomer, 10**12]])
    got = TwoTowerRetriever(version, catalogue, window, users).retrieve(ids, K)
    assert got.shape == (52, K) and (got[:51] >= 0).all() and (got[51] == -1).all()
    for user, row in zip(ids[:50], got):
        assert len(np.unique(row)) == K and not np.isin(row, window.item[window.user_id == user]).any()
    without_features = TwoTowerRetriever(version, catalogue, window).retrieve(ids[-2:], K)
    assert (without_features == -1).all()
    # A day later: items published on day 15 get vectors from their features, a user whose first
    # click is on day 15 one from that click (no features given), seen items include day 15's.
    catalogue15, window15 = _window(cfg, DAY15)
    first_seen = np.setdiff1d(window15.user_id, exported)[:1]
    later = TwoTowerRetriever(version, catalogue15, window15)
    assert len(catalogue15) > len(catalogue) and np.allclose(np.linalg.norm(later.item_vectors, axis=1), 1, atol=1e-5)
    row = later.retrieve(first_seen, K)[0]
    assert (row >= 0).all() and not np.isin(row, window15.item[window15.user_id == first_seen[0]]).any()


def _recalls(retrieved: np.ndarray, truth: list[np.ndarray], tail: np.ndarray) -> tuple[float, float]:
    return m.recall_at_k(retrieved, truth, K), m.tail_recall_at_k(retrieved, truth, K, tail)


@pytest.mark.slow
def test_logq_vs_no_logq_on_tail_recall(sim: PlatformConfig, record_property) -> None:
    """Measured, not a requirement on direction: logQ removes in-batch softmax's penalty on popular
    items, so its lists hold more popular items; tail recall is recorded for the report."""
    catalogue, window = _window(sim, DAY14)
    with connect_read(sim) as con:
        future = load_events(con, catalogue, "click", DAY15, DAY15)
    users = np.unique(future.user_id)
    truth = [np.unique(future.item[future.user_id == u]) for u in users]
    tail = m.tail_items(window.item, len(catalogue), sim.evaluation.tail_share)
    counts = np.bincount(window.item, minlength=len(catalogue))
    popular = _recalls(Popularity(window, len(catalogue)).retrieve(users, K), truth, tail)
    for seed in (1, 2):
        results = {}
        for logq in (True, False):
            version = train(_variant(sim, f"artifacts-logq-{logq}-{seed}", logq_correction=logq, seed=seed), DAY14)
            got = TwoTowerRetriever(version, catalogue, window).retrieve(users, K)
            results[logq] = (*_recalls(got, truth, tail), float(counts[got].mean()))
            record_property(f"seed{seed}_logq{logq}", results[logq])
            assert results[logq][0] > 3 * popular[0] and results[logq][1] > 0.1 > popular[1]
        assert results[True][2] > results[False][2]  # logQ lists: more popular items
