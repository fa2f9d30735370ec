"""Two-tower retrieval from a published version: exact top-k by dot product of the user vector
with every catalogue item's vector, the user's training positives excluded; and the item vectors of
a catalogue (new items through the item tower), which ANN indexes of fresh pools need."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.common.features import item_features, latest_sequences, lookup, to_item_rows, user_features
from models.common.tables import Catalogue, Events, UserTable
from models.common.vocab import Vocab
from models.retrieval.retriever import seen_matrix, top_k_rows
from models.retrieval.two_tower import TwoTower, item_vectors, load_model, user_vectors
from tasks.core.artifacts import Version

SCORE_CELLS = 1 << 22  # users x items scored per block


def catalogue_vectors(version: Version, catalogue: Catalogue, model: TwoTower | None = None,
                      vocabs: Mapping[str, Vocab] | None = None) -> np.ndarray:
    """(len(catalogue), d) L2-normalised item vectors: the version's exported ones, and for items
    it has not seen (published after its training) the item tower's, from their author,
    categories and cluster."""
    ids, vectors = np.load(version.path / "item_ids.npy"), np.load(version.path / "item_vectors.npy")
    pos, known = lookup(catalogue.item_id, ids)
    out = np.empty((len(catalogue), vectors.shape[1]), dtype=np.float32)
    out[known] = vectors[pos[known]]
    if not known.all():
        if model is None or vocabs is None:
            model, vocabs = load_model(version.path)
        out[~known] = item_vectors(model, item_features(vocabs, catalogue)[~known])
    return out


class TwoTowerRetriever:
    """A Retriever over a two-tower version. Item vectors: the exported ones, or from the item
    tower for catalogue items the version has not seen. User vectors: the exported ones, else from
    the user tower with the user's last positives in `events` and features in `users` (a user with
    neither gets -1 rows)."""

    name = "two_tower"

    def __init__(self, version: Version, catalogue: Catalogue, events: Events, users: UserTable | None = None):
        self.model, self.vocabs = load_model(version.path)
        self.sequence_length = int(version.meta["config"]["two_tower"]["sequence_length"])
        self.catalogue, self.events = catalogue, events
        no_users = UserTable(*(np.zeros(0, t) for t in (np.int64, str, str, np.int64)))
        self.users = users if users is not None else no_users
        self.item_vectors = catalogue_vectors(version, catalogue, self.model, self.vocabs)
        self.user_ids = np.load(version.path / "user_ids.npy")  # sorted (np.unique at export)
        self.user_vectors = np.load(version.path / "user_vectors.npy")

    def vectors(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(user_ids), d) user vectors and whether each user has one."""
        out = np.zeros((len(user_ids), self.item_vectors.shape[1]), dtype=np.float32)
        pos, known = lookup(user_ids, self.user_ids)
        out[known] = self.user_vectors[pos[known]]
        rest = np.flatnonzero(~known)
        _, has_features = lookup(user_ids[rest], self.users.user_id)
        rest = rest[has_features | np.isin(user_ids[rest], self.events.user_id)]
        if len(rest):
            seq = latest_sequences(self.events, user_ids[rest], self.sequence_length)
            seq = to_item_rows(seq, self.vocabs["item"].rows(self.catalogue.item_id))
            out[rest] = user_vectors(self.model, user_features(self.vocabs, self.users, user_ids[rest]), seq)
            known[rest] = True
        return out, known

    def retrieve(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        """(len(user_ids), k) catalogue rows by descending score, -1 padded; seen items excluded."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        vectors, known = self.vectors(user_ids)
        out = np.full((len(user_ids), k), -1, dtype=np.int64)
        rows = np.flatnonzero(known)
        block = max(1, SCORE_CELLS // max(len(self.catalogue), 1))
        for start in range(0, len(rows), block):
            r = rows[start : start + block]
            scores = vectors[r] @ self.item_vectors.T
            out[r] = top_k_rows(scores, k, seen_matrix(self.events, user_ids[r], len(self.catalogue)))
        return out
