"""Training read from the lake in bounded chunks (docs/SCALE.md "Training that streams"): small
chunks hold exactly the rows of the whole-table readers (same multiset) and give every example the
features the whole-table path gives it; with the default chunk size (the test data in one chunk)
streamed training ends with the weights of in-memory training on the whole tables."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from models.common.features import build_vocabs
from models.common.tables import Exposures
from models.ranking.features import ranking_features
from models.ranking.full import FullRanking
from models.retrieval.two_tower import TwoTower
from models.retrieval.two_tower_data import training_set
from tasks.core.config import RANKING_HEADS, PlatformConfig
from tasks.ranking import full, pre
from tasks.ranking.data import TEACHER_COLUMNS, exposure_chunks, load_exposures
from tasks.retrieval import two_tower
from tasks.retrieval.data import (
    connect_read,
    event_chunks,
    item_counts,
    load_catalogue,
    load_events,
    load_unclicked_impressions,
    read_events,
    rechunk,
)
from tests.conftest import last_day, ranking_world

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DAYS = 3
ROWS = 37  # a small chunk: several per day, batches and groups cut across chunks


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """400 users x 3 simulated days with their ranking exposures; small models, one epoch, hard
    and random negatives on."""
    return ranking_world(tmp_path_factory.mktemp("streaming"), simulator={"days": DAYS},
        retrieval={"train_window_days": DAYS, "two_tower": {
            "dim": 8, "batch_size": 64, "first_epochs": 1, "random_negatives": 16, "hard_negatives": 2}},
        ranking={"full": {"embedding_dim": 4, "experts": 2, "expert_hidden": 8, "tower_hidden": 8,
                          "batch_size": 128, "first_epochs": 1, "first_window_days": DAYS}})


def _key_order(e: Exposures) -> np.ndarray:
    return np.lexsort((e.item_id, e.user_id, e.day))


def test_rechunk_cuts_record_batches_into_tables_of_exact_size() -> None:
    values = np.arange(23)
    cuts = [[0, 3, 3, 8], [8, 15], [], [15, 23]]  # readers of record batches, one of them empty

    def reader(bounds: list[int]) -> pa.RecordBatchReader:
        schema = pa.schema([("x", pa.int64())])
        batches = [pa.record_batch([pa.array(values[a:b])], schema=schema) for a, b in pairwise(bounds)]
        return pa.RecordBatchReader.from_batches(schema, batches)

    tables = list(rechunk((reader(c) for c in cuts), 5))
    assert [t.num_rows for t in tables] == [5, 5, 5, 5, 3]
    assert np.concatenate([t.column("x").to_numpy() for t in tables]).tolist() == values.tolist()
    assert list(rechunk(iter([reader([])]), 5)) == []
    # by key: runs of equal values stay whole, a table ends at the first change at or after 5 rows
    values = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 3, 3, 4, 5, 5, 6, 6, 6])
    tables = list(rechunk((reader(c) for c in cuts), 5, key="x"))
    assert [t.column("x").to_numpy().tolist() for t in tables] == [
        values[:9].tolist(), values[9:17].tolist(), values[17:].tolist()]


@pytest.mark.slow
def test_event_chunks_hold_the_rows_of_the_whole_table(sim: PlatformConfig) -> None:
    first, last = sim.simulator.start_date, last_day(sim)
    with connect_read(sim) as con:
        catalogue = load_catalogue(con, last)
        whole = read_events(con, catalogue, "click", first, last)
        chunks = list(event_chunks(con, catalogue, "click", first, last, ROWS))
    assert len(chunks) > DAYS and {c.num_rows for c in chunks[:-1]} == {ROWS}
    streamed = pa.concat_tables(chunks).sort_by("event_id")
    assert streamed.equals(whole.sort_by("event_id"))


@pytest.mark.slow
def test_exposure_chunks_hold_the_rows_of_the_whole_table(sim: PlatformConfig) -> None:
    first, last = sim.simulator.start_date, last_day(sim)
    with connect_read(sim) as con:
        whole = load_exposures(con, first, last)
        p = np.random.default_rng(0).random((len(whole), len(RANKING_HEADS)))
        teacher = pd.DataFrame({"day": whole.day, "user_id": whole.user_id, "item_id": whole.item_id}).join(
            pd.DataFrame(p, columns=TEACHER_COLUMNS)).iloc[::-1]  # any order
        chunks = list(exposure_chunks(con, first, last, ROWS, teacher))
    longest = np.unique(whole.user_id, return_counts=True)[1].max()  # bounds any run of one user
    assert len(chunks) > DAYS and all(ROWS <= len(c) < ROWS + longest for c, _ in chunks[:-1])
    for c, _ in chunks:  # whole users of a day: no (day, user) in two chunks
        keys = {(d, u) for d, u in zip(c.day.tolist(), c.user_id.tolist())}
        assert all(keys.isdisjoint({(d, u) for d, u in zip(o.day.tolist(), o.user_id.tolist())})
                   for o, _ in chunks if o is not c)
    streamed = Exposures(*(np.concatenate([getattr(c, f) for c, _ in chunks]) for f in (
        "day", "user_id", "item_id", "shown_us", "position", "labels")))
    order = _key_order(streamed)
    a, b = whole.select(_key_order(whole)), streamed.select(order)
    for f in ("day", "user_id", "item_id", "shown_us", "position", "labels"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    joined = np.concatenate([t for _, t in chunks])[order]
    assert np.array_equal(joined, p[_key_order(whole)].astype(np.float32))  # each row's own prediction


@pytest.mark.slow
def test_two_tower_chunks_get_the_whole_table_inputs(sim: PlatformConfig) -> None:
    """Each chunk's examples: the sequences and hard negatives of `training_set` on the whole
    window (matched by event id)."""
    first, last = sim.simulator.start_date, last_day(sim)
    with connect_read(sim) as con:
        catalogue = load_catalogue(con, last)
        users = two_tower.load_users(con, last)
        ids = read_events(con, catalogue, "click", first, last).column("event_id").to_numpy()
        history = load_events(con, catalogue, "click", first, last)
        unclicked = load_unclicked_impressions(con, catalogue, first, last)
        counts = item_counts(con, catalogue, "click", first, last)
        vocabs = build_vocabs(catalogue, users, np.unique(history.user_id))
        whole = training_set(history, first, vocabs, catalogue, users, 20, unclicked)
        position = {e: i for i, e in enumerate(ids)}
        for chunk in event_chunks(con, catalogue, "click", first, last, ROWS):
            part = two_tower.chunk_examples(con, sim, vocabs, catalogue, users, chunk, np.arange(chunk.num_rows),
                                            counts, first, last)
            at = np.array([position[e] for e in chunk.column("event_id").to_numpy()])
            assert torch.equal(part.users, whole.users[at]) and torch.equal(part.seq, whole.seq[at])
            assert np.array_equal(part.items, whole.items[at]) and np.array_equal(part.p, whole.p)
            for i, j in enumerate(at):
                mine = part.hard_items[part.hard_ptr[part.hard_user[i]] : part.hard_ptr[part.hard_user[i] + 1]]
                theirs = whole.hard_items[whole.hard_ptr[whole.hard_user[j]] : whole.hard_ptr[whole.hard_user[j] + 1]]
                assert sorted(mine) == sorted(theirs)


@pytest.mark.slow
def test_ranking_chunks_get_the_whole_table_features(sim: PlatformConfig) -> None:
    """Full ranker and pre-ranker: each chunk's features (sequences from its users' clicks only)
    are those of the whole-table features."""
    first, last = sim.simulator.start_date, last_day(sim)
    with connect_read(sim) as con:
        src = full.load_sources(con, first, last, sim.ranking.full.history_days)
        exposures = load_exposures(con, first, last)
        vocabs = build_vocabs(src.catalogue, src.users, np.unique(exposures.user_id))
        whole = ranking_features(vocabs, src.catalogue, src.users, src.clicks, exposures,
                                 sim.ranking.full.sequence_length)
        for chunk, _ in exposure_chunks(con, first, last, ROWS):
            f = full.chunk_features(con, sim, vocabs, src.catalogue, src.users, chunk, first, last)
            at = _rows_of(exposures, chunk)
            for name in ("users", "items", "context", "seq"):
                assert np.array_equal(getattr(f, name), getattr(whole, name)[at]), name
        window = pre.sequence_window(sim, first, last)
        whole_pre = pre.inputs(vocabs, pre.load_context(sim, exposures), exposures, sim.ranking.full.sequence_length)
        chunks = [_rows_of(exposures, chunk) for chunk, _ in exposure_chunks(con, first, last, ROWS)]
        groups = pre.group_keys(exposures)
        for rows in chunks:
            assert np.isin(groups, groups[rows]).sum() == len(rows)  # whole (day, user) groups
            x = pre.chunk_inputs(con, sim, vocabs, src.catalogue, src.users, window, exposures.select(rows))
            for name in ("users", "seq", "items"):
                assert np.array_equal(getattr(x, name), getattr(whole_pre, name)[rows]), name
    assert len(chunks) > DAYS


def _rows_of(exposures: Exposures, chunk: Exposures) -> np.ndarray:
    """The row of `exposures` of each chunk row, by (day, user, item)."""
    keys = {k: i for i, k in enumerate(zip(exposures.day.tolist(), exposures.user_id.tolist(),
                                           exposures.item_id.tolist()))}
    return np.array([keys[k] for k in zip(chunk.day.tolist(), chunk.user_id.tolist(), chunk.item_id.tolist())])


@pytest.mark.slow
def test_default_chunks_train_as_the_whole_tables(sim: PlatformConfig) -> None:
    """One chunk (the default size holds the test data): the published weights are those of
    in-memory training on the whole-table readers' arrays (training_set / ranking_features)."""
    cfg = sim.model_copy(update={"paths": sim.paths.model_copy(
        update={"artifacts": str(sim.artifacts_dir.parent / "artifacts-default")})})
    first, last = cfg.simulator.start_date, last_day(cfg)
    tt, fr = cfg.retrieval.two_tower, cfg.ranking.full
    streamed = {"two_tower": two_tower.train(cfg, last), "full_ranking": full.train(cfg, last)}
    with connect_read(cfg) as con:
        catalogue = load_catalogue(con, last)
        users = two_tower.load_users(con, last)
        history = load_events(con, catalogue, "click", first, last)
        data_sources = full.load_sources(con, first, last, fr.history_days)
        exposures = load_exposures(con, first, last)
        unclicked = load_unclicked_impressions(con, catalogue, first, last)
    vocabs = build_vocabs(catalogue, users, np.unique(history.user_id))
    torch.manual_seed(tt.seed)
    model = TwoTower({k: len(v) for k, v in vocabs.items()}, tt.dim)
    two_tower.fit(model, training_set(history, first, vocabs, catalogue, users, tt.sequence_length, unclicked), tt, 1,
                  np.random.default_rng([tt.seed, last.toordinal()]))
    reference = {"two_tower": model.state_dict()}
    vocabs = build_vocabs(data_sources.catalogue, data_sources.users, np.unique(exposures.user_id))
    torch.manual_seed(fr.seed)
    ranker = FullRanking(full.architecture(fr, vocabs))
    ranker.set_priors(exposures.labels.mean(axis=0))
    features = ranking_features(vocabs, data_sources.catalogue, data_sources.users, data_sources.clicks, exposures,
                                fr.sequence_length)
    full.fit(ranker, features, exposures, fr, 1, np.random.default_rng([fr.seed, last.toordinal()]))
    reference["full_ranking"] = ranker.state_dict()
    for name, version in streamed.items():
        weights = torch.load(version.path / "weights.pt", weights_only=True)
        assert all(torch.equal(weights[k], reference[name][k]) for k in weights), name
