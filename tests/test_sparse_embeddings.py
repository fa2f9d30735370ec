"""Sparse embedding updates (docs/METHODS.md "Training from the lake in bounded batches"): a table of
SPARSE_MIN_ROWS rows or more trains with sparse gradients and lazy Adam, a smaller one densely with
Adam; checked against torch's dense Adam on the same steps."""

from __future__ import annotations

import torch
from torch import nn

from models.common.embeddings import SPARSE_MIN_ROWS, embedding_tables
from models.common.training import fit, optimizers


class _Model(nn.Module):
    def __init__(self, big: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = embedding_tables({"big": big, "small": 10}, ["big", "small"], 4, 0.1)
        self.out = nn.Linear(4, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb["big"](rows[:, 0]) + self.emb["small"](rows[:, 1])).squeeze(-1)


def _steps(model: _Model, batches: list[torch.Tensor], steppers: list[torch.optim.Optimizer]) -> None:
    for rows in batches:
        loss = (model(rows) - 1.0).pow(2).mean()
        for opt in steppers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in steppers:
            opt.step()


def test_a_large_table_is_sparse_and_a_small_one_dense() -> None:
    model = _Model(SPARSE_MIN_ROWS)
    assert model.emb["big"].sparse and not model.emb["small"].sparse
    kinds = sorted(type(o).__name__ for o in optimizers(model, 0.01))
    assert kinds == ["Adam", "SparseAdam"]
    assert [type(o).__name__ for o in optimizers(_Model(SPARSE_MIN_ROWS - 1), 0.01)] == ["Adam"]


def test_lazy_adam_moves_only_the_rows_a_batch_touched() -> None:
    """Step 1 (rows 1, 2): lazy and dense Adam agree (the moments start at zero). Step 2 (rows 3, 4):
    dense Adam moves rows 1 and 2 again by their momentum, lazy Adam leaves them where step 1 put
    them; rows never looked up stay at their initial values under both."""
    first, second = torch.tensor([[1, 1], [2, 2]]), torch.tensor([[3, 3], [4, 4]])
    lazy = _Model(SPARSE_MIN_ROWS)
    dense = _Model(SPARSE_MIN_ROWS)
    dense.emb["big"].sparse = False
    start = lazy.emb["big"].weight.detach().clone()
    lazy_opts, dense_opts = optimizers(lazy, 0.01), [torch.optim.Adam(dense.parameters(), lr=0.01)]
    _steps(lazy, [first], lazy_opts)
    _steps(dense, [first], dense_opts)
    after_one = lazy.emb["big"].weight.detach().clone()
    assert torch.allclose(after_one, dense.emb["big"].weight.detach(), atol=1e-7)
    assert not torch.equal(after_one[1:3], start[1:3])
    _steps(lazy, [second], lazy_opts)
    _steps(dense, [second], dense_opts)
    w_lazy, w_dense = lazy.emb["big"].weight.detach(), dense.emb["big"].weight.detach()
    assert torch.equal(w_lazy[1:3], after_one[1:3])  # not in step 2's batch: unchanged
    assert not torch.allclose(w_dense[1:3], after_one[1:3])  # dense Adam's momentum moved them
    assert torch.equal(w_lazy[5:], start[5:]) and torch.equal(w_dense[5:], start[5:])


def test_fit_trains_a_sparse_table() -> None:
    model = _Model(SPARSE_MIN_ROWS)
    rows = torch.tensor([[1, 1], [2, 2], [3, 3]])
    history = fit(model, lambda: [rows, rows], lambda b: ((model(b) - 1.0).pow(2).mean(), len(b)),
                  examples=6, epochs=3, lr=0.05, label="test")
    assert history[-1]["loss"] < history[0]["loss"]
