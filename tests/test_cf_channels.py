"""U2U2I, U2A2I and U2A2A2I (models/retrieval/cf_channels.py) on tiny hand-made datasets whose rankings are
worked out in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from models.retrieval import cf_channels
from models.retrieval.cf_channels import U2A2A2I, U2A2I, U2U2I
from tasks.core.config import AuthorChannelsConfig, RetrievalConfig, UserCFConfig
from tests.test_i2i import catalogue_of, events_of

NO_FOLLOWS = (np.zeros(0, np.int64), np.zeros(0, np.int64))
NO_IMPLICIT = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


def _u2u2i(top_k_users: int) -> U2U2I:
    likes = {1: [0, 1, 2], 2: [0, 1, 2, 3], 3: [5, 6], 4: [5, 7], 5: [0, 5]}
    rows = [(u, i) for u, items in likes.items() for i in items]
    cfg = RetrievalConfig(u2u2i=UserCFConfig(top_k_users=top_k_users))
    return U2U2I(catalogue_of([7] * 8), events_of(rows), cfg)


def test_u2u2i_ranks_the_items_of_similar_users() -> None:
    # user 5 {0, 5}: cos with 1 = 1/√6 = .41, with 2 = 1/√8 = .35, with 3 and 4 = 1/2;
    # items: 1 and 2 get .41 + .35, 6 and 7 get .5, 3 gets .35; 0 and 5 are seen
    assert _u2u2i(4).retrieve(np.array([5]), 6).tolist() == [[1, 2, 6, 7, 3, -1]]
    # one neighbour: users 3 and 4 tie at 1/2, the lower row (user 3) wins: item 6
    assert _u2u2i(1).retrieve(np.array([5]), 3).tolist() == [[6, -1, -1]]
    # user 1's nearest other user is 2: item 3; user 3 ties users 4 and 5 at 1/2: user 4, item 7
    got = _u2u2i(1).retrieve(np.array([1, 3, 99]), 2)
    assert got.tolist() == [[3, -1], [7, -1], [-1, -1]]


# Items 0-2 by author 10, 3-4 by author 20, 5 by author 30, 6 by author 40.
AUTHORS = [10, 10, 10, 20, 20, 30, 40]
# Clicks in the window: item 0 x2 (users 1, 2), 1 x1, 2 x1, 3 x3, 4 x1, 5 x2. Per user and author
# (engagement): 1 {10: 1, 20: 1}, 2 {10: 1, 20: 2}, 3 {10: 1, 20: 1}, 4 {30: 1}, 5 {30: 1, 10: 1};
# cos(10, 20) = 4 / (2·√6) = .82, cos(10, 30) = 1 / (2·√2) = .35, cos(20, 30) = 0.
ROWS = [(1, 0), (1, 3), (2, 0), (2, 3), (2, 4), (3, 1), (3, 3), (4, 5), (5, 5), (5, 2)]


def _cfg(items_per_author: int = 2) -> RetrievalConfig:
    return RetrievalConfig(authors=AuthorChannelsConfig(items_per_author=items_per_author, similar_authors=5))


def test_u2a2i_weights_explicit_and_implicit_follows() -> None:
    follows = (np.array([9, 9, 8]), np.array([10, 77, 30]))  # author 77 has no item: ignored
    # user 9, implicit: author 20 at affinity 2 (weight 2/4), author 30 at 4 (weight 1), 10 at 1
    # (explicit: weight 1 wins)
    implicit = (np.array([9, 9, 9]), np.array([20, 30, 10]), np.array([2.0, 4.0, 1.0]))
    channel = U2A2I(catalogue_of(AUTHORS), events_of(ROWS), _cfg(), follows, implicit)
    # user 9: 5 (1 x 2 clicks) and 0 (1 x 2) tie -> lower row first, then 3 (.5 x 3), 1 (1 x 1; 2 is
    # author 10's third item, beyond items_per_author), 4 (.5 x 1)
    got = channel.retrieve(np.array([9, 8, 5, 1]), 6)
    assert got[0].tolist() == [0, 5, 3, 1, 4, -1]
    assert got[1].tolist() == [5, -1, -1, -1, -1, -1]  # user 8 follows author 30 only
    assert got[2].tolist() == [-1] * 6  # user 5 follows nobody
    assert np.all(got[3] == -1)


def test_u2a2i_never_returns_seen_items() -> None:
    follows = (np.array([2]), np.array([20]))
    channel = U2A2I(catalogue_of(AUTHORS), events_of(ROWS), _cfg(), follows, NO_IMPLICIT)
    assert channel.retrieve(np.array([2]), 3).tolist() == [[-1, -1, -1]]  # user 2 clicked 3 and 4


def test_u2a2a2i_reaches_similar_authors_items() -> None:
    follows = (np.array([6]), np.array([10]))  # user 6 follows author 10, clicked nothing
    channel = U2A2A2I(catalogue_of(AUTHORS), events_of(ROWS), _cfg(), follows, NO_IMPLICIT)
    # reached: 20 (.82) -> 3 (.82 x 3), 4 (.82 x 1); 30 (.35) -> 5 (.35 x 2); never author 10's own
    assert channel.retrieve(np.array([6]), 5).tolist() == [[3, 4, 5, -1, -1]]
    # user 3 follows 10 implicitly and clicked 1 and 3
    implicit = (np.array([3]), np.array([10]), np.array([5.0]))
    channel = U2A2A2I(catalogue_of(AUTHORS), events_of(ROWS), _cfg(), NO_FOLLOWS, implicit)
    assert channel.retrieve(np.array([3, 4]), 3).tolist() == [[4, 5, -1], [-1, -1, -1]]


@pytest.mark.parametrize("channel_class", [U2U2I, U2A2I, U2A2A2I])
def test_channels_exclude_seen_items_and_keep_answers_in_blocks(channel_class, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    rows = list(zip(rng.integers(0, 50, 800).tolist(), rng.integers(0, 40, 800).tolist()))
    authors = rng.integers(0, 8, 40).tolist()
    follows = (rng.integers(0, 50, 60), rng.integers(0, 8, 60))
    implicit = (rng.integers(0, 50, 80), rng.integers(0, 8, 80), rng.random(80) + 0.1)
    extra = () if channel_class is U2U2I else (follows, implicit)
    channel = channel_class(catalogue_of(authors), events_of(rows), _cfg(items_per_author=4), *extra)
    users = np.arange(-3, 53)
    whole = channel.retrieve(users, 12)
    assert whole.shape == (56, 12) and whole.dtype == np.int64
    assert (whole >= 0).sum() > 100
    seen = set(rows)
    assert not any((u, i) in seen for u, row in zip(users.tolist(), whole.tolist()) for i in row)
    for row in whole:  # best first, -1 only at the end, no duplicates
        filled = row[row >= 0]
        assert np.all(row[len(filled) :] == -1) and len(set(filled)) == len(filled)
    monkeypatch.setattr(cf_channels, "DEFAULT_BUDGET", 40)  # many small blocks of users
    assert np.array_equal(channel.retrieve(users, 12), whole)
