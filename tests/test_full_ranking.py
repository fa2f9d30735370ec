"""The multi-objective full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)"): behaviour sequences against a hand computation
and against pandas on the simulation; cold training through day 12 of the 15-day simulation,
evaluated on day 13 per head and segment (every head above chance, click above the items'
training click-through rate and beyond how often the user clicked the candidate's category
before); the match counts against a loop; the serving scores by user against the row-by-row model;
aged warm-start training; determinism; reloadable weights."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.common.tables import Events
from models.common.vocab import KINDS
from models.ranking.features import CONTEXT_SIZES, behaviour_sequences, ranking_features
from models.ranking.full import (
    Architecture,
    FullRanking,
    load_model,
    match_counts,
    predict_proba,
    predict_proba_by_user,
)
from tasks.core import artifacts, registry
from tasks.core.config import RANKING_HEADS, PlatformConfig, load_config
from tasks.core.eval_metrics import auc
from tasks.core.warehouse import connect
from tasks.ranking.data import build_exposures, load_exposures
from tasks.ranking.evaluate import COLUMNS, evaluate, write_eval
from tasks.ranking.full import MODEL, load_sources, predict, train
from tasks.retrieval.data import connect_read
from tests.conftest import config_variant

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def ranking(retrieval_sim: Path) -> tuple[PlatformConfig, artifacts.Version, pd.DataFrame]:
    """Config (own artifact store); the cold version trained through day 12 (current); its
    evaluation on day 13."""
    path = config_variant(retrieval_sim, "full-ranking")
    cfg = load_config(path)
    day12, day13 = (cfg.simulator.start_date + dt.timedelta(days=n) for n in (11, 12))
    build_exposures(cfg, day12 - dt.timedelta(days=cfg.ranking.full.first_window_days - 1), day13)
    torch.set_num_threads(1)
    cold = train(cfg, day12, make_current=True)
    return cfg, cold, evaluate(cfg, cold, day13)


def _day(cfg: PlatformConfig, n: int) -> dt.date:
    return cfg.simulator.start_date + dt.timedelta(days=n - 1)


def test_sequences_hold_the_last_clicks_strictly_before() -> None:
    clicks = Events(user_id=np.array([1, 2, 1, 1]), item=np.array([10, 12, 11, 13]),
                    ts_us=np.array([100, 150, 200, 300]), day=np.zeros(4, "datetime64[D]"))
    seq = behaviour_sequences(clicks, np.array([1, 1, 2, 2, 3, 1]), np.array([200, 301, 150, 151, 500, 100]), 2)
    assert seq.tolist() == [[10, -1], [13, 11], [-1, -1], [12, -1], [-1, -1], [-1, -1]]


def test_every_head_beats_chance_and_click_beats_item_ctr(ranking, record_property) -> None:
    cfg, cold, frame = ranking
    day13 = _day(cfg, 13)
    first, last = (dt.date.fromisoformat(d) for d in cold.meta["training_window"].split(".."))
    assert (first, last) == (_day(cfg, 12 - cfg.ranking.full.first_window_days + 1), _day(cfg, 12))
    with connect_read(cfg) as con:
        events = con.execute(
            "select user_id, item_id, event_type, cast(dt as date) as day from raw.events "
            "where event_type in ('impression', 'click') and dt between ? and ?", [first, last],
        ).df()
        exposures = load_exposures(con, day13, day13)
        earlier = con.execute(
            "select e.user_id, i.category_l2, count(*) as n from raw.events e join raw.items i using (item_id) "
            "where e.event_type = 'click' and e.dt < ? group by all", [day13]).df()
        categories = con.execute("select item_id, category_l2 from raw.items").df()
    # baseline: the item's click-through rate over the training days ((user, item, day) pairs)
    pairs = events.drop_duplicates().groupby(["item_id", "event_type"]).size().unstack(fill_value=0)
    ctr = pairs["click"] / pairs["impression"]
    baseline = pd.Series(exposures.item_id).map(ctr).fillna(pairs["click"].sum() / pairs["impression"].sum())
    # one-feature baseline: how often the user clicked the candidate's category before day 13
    shown = pd.DataFrame({"user_id": exposures.user_id, "item_id": exposures.item_id}).merge(
        categories, on="item_id", how="left")
    in_category = shown.merge(earlier, on=["user_id", "category_l2"], how="left").n.fillna(0).to_numpy()
    overall = frame[frame.segment == "all"].set_index("head")
    base_auc = {h: round(auc(exposures.label(h), baseline.to_numpy()), 4) for h in RANKING_HEADS}
    category_auc = round(auc(exposures.label("click"), in_category), 4)
    record_property("auc_model", overall.auc.round(4).to_dict())
    record_property("auc_item_ctr", base_auc)
    record_property("auc_click_category_clicks", category_auc)
    assert (overall.auc > 0.5).all(), overall.auc
    assert overall.auc["click"] > base_auc["click"]
    # the ranker knows more than the category count (0.797 vs 0.752; without match counts 0.762)
    assert overall.auc["click"] > category_auc + 0.02, (overall.auc["click"], category_auc)


def test_evaluation_rows_per_head_and_segment(ranking) -> None:
    cfg, cold, frame = ranking
    day13 = _day(cfg, 13)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day13, day13)
        segments = con.execute("select distinct segment from int_user_day_segments where day = ?", [day13]).df()
    assert list(frame.columns) == list(COLUMNS)
    assert set(frame.segment) == {"all", *segments.segment}
    assert len(frame) == len(RANKING_HEADS) * frame.segment.nunique()
    assert (frame.model == "full_ranking").all() and (frame.version == cold.name).all()
    overall = frame[frame.segment == "all"].set_index("head")
    assert (overall.n == len(exposures)).all()
    assert overall.positives.tolist() == exposures.labels.sum(axis=0).astype(int).tolist()
    assert np.allclose(overall.observed_rate, exposures.labels.mean(axis=0))
    calibration = overall.mean_prediction / overall.observed_rate
    assert calibration.between(0.5, 2.0).all(), calibration
    write_eval(cfg, frame)
    write_eval(cfg, frame)  # a re-run replaces its rows
    with connect(cfg, read_only=True) as con:
        stored = con.execute("select count(*) from ranking_eval where version = ?", [cold.name]).fetchone()[0]
    assert stored == len(frame)


def test_sequence_feature_matches_pandas(ranking) -> None:
    cfg, cold, _ = ranking
    day13, length = _day(cfg, 13), cfg.ranking.full.sequence_length
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day13, day13)
        src = load_sources(con, day13, day13, cfg.ranking.full.history_days)
        clicks = con.execute("select user_id, item_id, ts from raw.events where event_type = 'click'").df()
    _, vocabs = load_model(cold.path)
    f = ranking_features(vocabs, src.catalogue, src.users, src.clicks, exposures, length)
    shown = pd.to_datetime(exposures.shown_us, unit="us")
    earlier = [(clicks.user_id == u) & (clicks.ts < t) for u, t in zip(exposures.user_id, shown)]
    counts = np.array([m.sum() for m in earlier])
    same_day = [((clicks.ts[m] >= pd.Timestamp(day13)).any()) for m in earlier]
    # hand-picked: a clicked example after a same-day click; the longest history; an empty one
    picks = [
        next(i for i in range(len(exposures)) if exposures.label("click")[i] and same_day[i] and counts[i] < length),
        int(np.argmax(counts)),
        int(np.argmin(counts)),
    ]
    assert counts[picks[1]] > length and counts[picks[2]] == 0
    for i in picks:
        expected = clicks[earlier[i]].sort_values("ts", ascending=False).item_id.head(length).tolist()
        rows = f.seq[i, :, 0]
        assert vocabs["item"].ids[rows[rows > 0] - 1].tolist() == expected
        assert (f.seq[i, len(expected):] == 0).all() and (f.seq[i, : len(expected)] > 0).all()


def test_aged_training_warm_starts_one_epoch_on_the_new_day(ranking) -> None:
    cfg, cold, _ = ranking
    day13 = _day(cfg, 13)
    warm = train(cfg, day13)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day13, day13)
    assert warm.meta["warm_started_from"] == cold.name and warm.meta["epochs"] == 1
    assert warm.meta["training_window"] == f"{day13}..{day13}" and warm.meta["examples"] == len(exposures)
    assert artifacts.current(registry.model_store(cfg, MODEL)).name == cold.name  # published, not current
    parent, parent_vocabs = load_model(cold.path)
    child, vocabs = load_model(warm.path)
    for kind, vocab in parent_vocabs.items():
        assert np.array_equal(vocabs[kind].ids[: len(vocab.ids)], vocab.ids)
    assert len(vocabs["user"]) > len(parent_vocabs["user"])
    # known users absent from day 13 keep their rows exactly; those present moved
    old = parent_vocabs["user"].ids
    idle = parent_vocabs["user"].rows(old[~np.isin(old, exposures.user_id)])
    active = parent_vocabs["user"].rows(old[np.isin(old, exposures.user_id)])
    w_old, w_new = parent.emb["user"].weight.detach(), child.emb["user"].weight.detach()
    assert len(idle) and len(active)
    assert torch.equal(w_new[idle], w_old[idle])
    assert not torch.isclose(w_new[active], w_old[active]).all(dim=1).any()


def test_training_is_deterministic_and_weights_reload(ranking, tmp_path: Path) -> None:
    cfg, cold, _ = ranking
    day12, day13 = _day(cfg, 12), _day(cfg, 13)
    small = cfg.ranking.full.model_copy(update={"first_window_days": 2, "first_epochs": 1})
    small_cfg = cfg.model_copy(update={"ranking": cfg.ranking.model_copy(update={"full": small})})
    a, b = (train(small_cfg, day12, store=tmp_path / name) for name in ("a", "b"))
    assert a.meta["data_hash"] == b.meta["data_hash"] and a.meta["loss_per_epoch"] == b.meta["loss_per_epoch"]
    wa, wb = (torch.load(v.path / "weights.pt", weights_only=True) for v in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with connect_read(cfg) as con:
        exposures = load_exposures(con, day13, day13)
    pa, pb = predict(cfg, a, exposures), predict(cfg, b, exposures)
    assert pa.shape == (len(exposures), len(RANKING_HEADS)) and pa.dtype == np.float32
    assert np.array_equal(pa, pb) and ((pa >= 0) & (pa <= 1)).all()
    # the cold version's files: state dict tensors only, vocabularies without pickles
    state = torch.load(cold.path / "weights.pt", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    assert np.load(cold.path / "vocab.npz", allow_pickle=False)["item"].dtype == np.int64
    assert len(cold.meta["data_hash"]) == 64 and len(cold.meta["loss_per_epoch"]) == cfg.ranking.full.first_epochs


def test_match_counts_count_the_earlier_clicks_sharing_each_item_column() -> None:
    rng = np.random.default_rng(3)
    seq, items = rng.integers(0, 4, (50, 6, 5)), rng.integers(0, 4, (50, 5))
    expected = [[sum(1 for s in seq[b] if s[c] == items[b, c] and s[c] != 0) for c in range(5)] for b in range(50)]
    got = match_counts(torch.from_numpy(seq), torch.from_numpy(items))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np.log1p(expected), rtol=1e-6)


@pytest.mark.parametrize("budget", [1, 5_000, 1 << 20])
def test_scores_by_user_equal_the_row_by_row_model(budget: int) -> None:
    """`predict_proba_by_user` (each user's sequence embedded once, its candidates attended together,
    users blocked by sequence length and each block's padding cut) equals `predict_proba` on every
    (user, candidate) row with the user's full padded sequence: users with full, partial and empty
    histories, unknown entries inside a sequence, users with no candidates, blocks of one user up to all."""
    torch.manual_seed(0)
    model = FullRanking(Architecture(sizes={k: 30 for k in KINDS} | CONTEXT_SIZES, heads=len(RANKING_HEADS), dim=8,
                                     experts=3, expert_hidden=16, tower_hidden=8, interaction=True, match_counts=True))
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    rng = np.random.default_rng(5)
    n_users, length = 40, 12
    users = rng.integers(1, 30, (n_users, 4))
    seq = rng.integers(1, 30, (n_users, length, 5))
    filled = rng.integers(0, length + 1, n_users)  # right-padded after `filled` entries
    filled[:3] = (0, length, 1)
    seq[np.arange(length)[None, :] >= filled[:, None]] = 0
    seq[5, 2] = 0  # an all-unknown entry inside a sequence
    row_user = np.sort(rng.choice(np.r_[0:n_users][np.arange(n_users) != 7], 300))  # user 7 has no candidates
    row_user = rng.permutation(row_user)
    items = rng.integers(0, 30, (300, 5))
    items[::4] = seq[row_user[::4], 0]  # candidates that match history entries
    context = np.column_stack([rng.integers(0, size, 300) for size in CONTEXT_SIZES.values()])
    got = predict_proba_by_user(model, users, seq, items, context, row_user, budget=budget)
    expected = predict_proba(model, users[row_user], items, context, seq[row_user])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("interaction", "matches"), [(False, False), (True, False), (True, True)])
def test_fused_heads_and_split_first_layer_equal_the_modules(interaction: bool, matches: bool) -> None:
    """`heads` (the experts' and gates' first layers as one product, experts and towers batched)
    equals the MMoE computed module by module, and the first layer split by the parts of x
    (`first_layer_blocks`, as serving uses it) sums to the same pre-activations; gradients too."""
    torch.manual_seed(0)
    sizes = {k: 30 for k in KINDS} | CONTEXT_SIZES
    model = FullRanking(Architecture(sizes=sizes, heads=len(RANKING_HEADS), dim=8, experts=3, expert_hidden=16,
                                     tower_hidden=8, interaction=interaction, match_counts=matches))
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    user, cand, context, interest = (torch.randn(64, 8 * k) for k in (4, 5, 3, 5))
    counts = torch.rand(64, 5)
    x = model.mmoe_input(user, cand, context, interest, counts)

    def by_modules(x: torch.Tensor) -> torch.Tensor:
        experts = torch.stack([e(x) for e in model.experts], dim=1)
        mixed = [(torch.softmax(g(x), dim=-1)[..., None] * experts).sum(1) for g in model.gates]
        return torch.cat([t(m) for t, m in zip(model.towers, mixed)], dim=1)

    expected, got = by_modules(x), model.heads(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    params = [p for part in (model.experts, model.gates, model.towers) for p in part.parameters()]
    for a, b in zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(by_modules(x).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    blocks, bias = model.first_layer_blocks()
    parts = {"user": user, "cand": cand, "context": context, "interest": interest, "interaction": interest * cand,
             "matches": counts}
    split = sum(parts[name] @ w.T for name, w in blocks.items()) + bias
    assert set(blocks) == set(parts) - (set() if interaction else {"interaction"}) - (set() if matches else {"matches"})
    torch.testing.assert_close(split, torch.nn.functional.linear(x, *model.first_layer()), rtol=1e-5, atol=1e-5)
