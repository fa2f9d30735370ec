"""I2I similarities (models/retrieval/i2i.py) against independent computations: ItemCF against dense numpy,
Swing against the loop reference (models/retrieval/i2i_reference.py), the top-k tables, the user cap, and
the U2I2I retriever on hand-made events."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.common.tables import Catalogue, Events
from models.retrieval import i2i
from models.retrieval.cf_common import cap_users_per_item, top_k_per_row
from models.retrieval.i2i_reference import swing_reference
from models.retrieval.retriever import top_k_rows
from tasks.core.config import ItemCFConfig, RetrievalConfig, SwingConfig

TOL = 1e-9


def catalogue_of(authors: list[int]) -> Catalogue:
    """A catalogue of len(authors) items (ids 1000 + row) by the given authors."""
    n = len(authors)
    zeros = np.zeros(n, dtype=np.int32)
    return Catalogue(
        item_id=1000 + np.arange(n, dtype=np.int64), author_id=np.asarray(authors, dtype=np.int64),
        category_l1=zeros, category_l2=zeros, content_cluster=zeros, publish_us=np.zeros(n, dtype=np.int64),
        l1_names=("news",), l2_names=("news",),
    )


def events_of(rows: list[tuple[int, int]]) -> Events:
    """Positives (user_id, catalogue row) in the order given, one second apart."""
    users, items = (np.array([r[i] for r in rows], dtype=np.int64) for i in (0, 1))
    ts = 1_700_000_000_000_000 + np.arange(len(rows), dtype=np.int64) * 1_000_000
    return Events(user_id=users, item=items, ts_us=ts, day=ts.astype("datetime64[us]").astype("datetime64[D]"))


def random_positives(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    """A random binary users x items matrix with a few heavy users and popular items."""
    rng = np.random.default_rng(seed)
    p = density * np.outer(rng.pareto(2.0, users) + 0.3, rng.pareto(2.0, items) + 0.3)
    return sp.csr_matrix((rng.random((users, items)) < np.minimum(p, 0.9)).astype(np.float64))


def full(blocks) -> np.ndarray:
    return sp.vstack([block for _, block in blocks]).toarray()


def dense_itemcf(x: np.ndarray, damping: bool) -> np.ndarray:
    """Brute force: cosine between the columns of the (row-weighted) matrix."""
    w = (x.sum(axis=1) + 5.0) ** -0.35 if damping else np.ones(len(x))
    liked = x * w[:, None]
    norms = np.linalg.norm(liked, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.nan_to_num(liked.T @ liked / np.outer(norms, norms))
    np.fill_diagonal(sim, 0.0)
    return sim


@pytest.mark.parametrize("damping", [False, True])
@pytest.mark.parametrize("budget", [1 << 24, 40])  # one block; many blocks
def test_itemcf_equals_dense_brute_force(damping: bool, budget: int) -> None:
    x = random_positives(120, 70, 0.05, seed=1)
    cfg = ItemCFConfig(top_k=10, max_users_per_item=10_000, heavy_user_damping=damping)
    got = full(i2i.itemcf_blocks(x, cfg, budget=budget))
    np.testing.assert_allclose(got, dense_itemcf(x.toarray(), damping), rtol=0, atol=TOL)


@pytest.mark.parametrize("damping", [False, True])
@pytest.mark.parametrize("budget,chunk", [(1 << 24, 1 << 20), (60, 7)])  # one block and chunk; many
def test_swing_equals_loop_reference(damping: bool, budget: int, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(i2i, "CHUNK_PAIRS", chunk)
    x = random_positives(70, 45, 0.08, seed=2)
    assert np.bincount(x.indices, minlength=45).max() < 70  # the cap below does not bind
    cfg = SwingConfig(alpha=0.7, top_k=10, max_users_per_item=70, heavy_user_damping=damping)
    got = full(i2i.swing_blocks(x, cfg, budget=budget))
    want = swing_reference(x, 0.7, damping)
    assert (want > 0).sum() > 200  # a meaningful comparison
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_neighbour_tables_are_the_top_k_of_the_similarities() -> None:
    x = random_positives(90, 60, 0.05, seed=3)
    k = 6
    for model, cfg in ((i2i.itemcf, ItemCFConfig(top_k=k)), (i2i.swing, SwingConfig(top_k=k))):
        table = model(x, cfg)
        sim = dense_itemcf(x.toarray(), False) if model is i2i.itemcf else swing_reference(x, 1.0, True)
        assert table.neighbours.shape == table.scores.shape == (60, k)
        for item in range(60):
            got, scores = table.neighbours[item], table.scores[item]
            expected = np.sort(sim[item][sim[item] > 0])[::-1][:k]
            assert (got >= 0).sum() == len(expected)  # padded with -1 past the non-zero similarities
            assert np.all(got[len(expected) :] == -1) and np.all(scores[len(expected) :] == 0)
            assert item not in got
            np.testing.assert_allclose(scores[: len(expected)], expected, rtol=0, atol=TOL)
            np.testing.assert_allclose(sim[item, got[: len(expected)]], scores[: len(expected)], rtol=0, atol=TOL)
        assert np.all(np.diff(table.scores, axis=1) <= 0)


def test_top_k_per_row_orders_by_score_then_column() -> None:
    m = sp.csr_matrix(np.array([[0.5, 0.0, 0.9, 0.5, 0.1], [0.0] * 5, [0.2, 0.2, 0.2, 0.2, 0.2]]))
    cols, vals = top_k_per_row(m, 3)
    assert cols.tolist() == [[2, 0, 3], [-1, -1, -1], [0, 1, 2]]
    assert vals.tolist() == [[0.9, 0.5, 0.5], [0.0, 0.0, 0.0], [0.2, 0.2, 0.2]]
    rng = np.random.default_rng(0)  # long rows go through the histogram pre-filter
    dense = np.round(rng.random((40, 3000)), 3) * (rng.random((40, 3000)) < 0.5)
    cols, vals = top_k_per_row(sp.csr_matrix(dense), 25)
    order = np.lexsort((np.broadcast_to(np.arange(3000), dense.shape), -dense), axis=1)[:, :25]
    assert np.array_equal(cols, order)
    assert np.array_equal(vals, np.take_along_axis(dense, order, axis=1))


def test_top_k_rows_keeps_the_lowest_columns_tied_at_the_cut() -> None:
    """Dense top-k (the channels' retrieval): score descending, then column ascending, also for the
    items tied exactly at the k-th score; excluded and -inf cells never returned."""
    rng = np.random.default_rng(3)
    dense = np.round(rng.random((60, 400)), 1)  # 11 distinct values: ties everywhere, at every cut
    dense[5] = 0.0  # a row tied throughout
    exclude = sp.csr_matrix((rng.random((60, 400)) < 0.1).astype(float))
    got = top_k_rows(dense, 37, exclude)
    masked = np.where(exclude.toarray() > 0, -np.inf, dense)
    order = np.lexsort((np.broadcast_to(np.arange(400), dense.shape), -masked), axis=1)[:, :37]
    want = np.where(np.take_along_axis(masked, order, axis=1) == -np.inf, -1, order)
    assert np.array_equal(got, want)
    assert got[5].tolist() == [c for c in range(400) if not exclude[5, c]][:37]


def test_cap_keeps_each_items_lowest_priority_users() -> None:
    x = random_positives(200, 30, 0.2, seed=4)
    capped = cap_users_per_item(x, 15, seed=9)
    rank = np.empty(200, dtype=np.int64)
    rank[np.random.default_rng(9).permutation(200)] = np.arange(200)  # the same seeded priorities
    xc, cc = x.tocsc(), capped.tocsc()
    for item in range(30):
        users = xc.indices[xc.indptr[item] : xc.indptr[item + 1]]
        want = np.sort(users[np.argsort(rank[users])][:15])
        assert np.array_equal(np.sort(cc.indices[cc.indptr[item] : cc.indptr[item + 1]]), want)
    assert (np.bincount(x.indices, minlength=30) > 15).any()  # the cap binds somewhere
    assert cap_users_per_item(x, 10_000, seed=9) is x


def test_u2i2i_scores_the_seeds_neighbours_and_skips_seen_items() -> None:
    # users 1-3 liked items 0 and 1, users 2-3 item 4 too, users 4-5 items 2 and 3
    rows = [(1, 0), (1, 1), (2, 0), (2, 1), (2, 4), (3, 0), (3, 1), (3, 4), (4, 2), (4, 3), (5, 2), (5, 3)]
    rows += [(9, 3), (9, 0)]  # user 9: item 3, then item 0 most recently
    catalogue, events = catalogue_of([100] * 6), events_of(rows)
    for seed_items in (1, 2):
        cfg = RetrievalConfig(seed_items=seed_items, itemcf=ItemCFConfig(top_k=5), swing=SwingConfig(top_k=5))
        for channel in (i2i.U2I2I.itemcf(catalogue, events, cfg), i2i.U2I2I.swing(catalogue, events, cfg)):
            got = channel.retrieve(np.array([9, 1, 77]), 4)
            assert got.shape == (3, 4) and got.dtype == np.int64
            # user 9's most recent seed is item 0: its neighbours 1 (3 common users), then 4 (2);
            # item 2 is a neighbour of the older item 3 only, a seed when seed_items == 2
            if seed_items == 1:
                assert got[0].tolist() == [1, 4, -1, -1], channel.name
            else:
                assert got[0, 0] == 1 and set(got[0, :3]) == {1, 2, 4} and got[0, 3] == -1, channel.name
            assert got[1, 0] == 4 and not {0, 1} & set(got[1])  # 0 and 1 are user 1's own positives
            if seed_items == 1:  # user 1's seed: item 1, whose only other neighbour is 4
                assert got[1].tolist() == [4, -1, -1, -1]
            assert got[2].tolist() == [-1] * 4  # an unknown user: nothing


def test_u2i2i_blocks_of_users_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    rows = list(zip(rng.integers(0, 40, 600).tolist(), rng.integers(0, 30, 600).tolist()))
    catalogue, events = catalogue_of([100] * 30), events_of(rows)
    cfg = RetrievalConfig(seed_items=3)
    users = np.arange(-2, 42)
    whole = i2i.U2I2I.swing(catalogue, events, cfg).retrieve(users, 10)
    assert (whole >= 0).sum() > 200
    seen = {(u, i) for u, i in rows}
    assert not any((u, i) in seen for u, row in zip(users.tolist(), whole.tolist()) for i in row)
    monkeypatch.setattr(i2i, "DEFAULT_BUDGET", 3 * cfg.swing.top_k * 2)  # two users per block
    channel = i2i.U2I2I.swing(catalogue, events, cfg)
    assert channel.users_per_block == 2
    assert np.array_equal(channel.retrieve(users, 10), whole)
