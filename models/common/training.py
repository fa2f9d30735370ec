"""The Adam epoch loop every embedding model (two-tower, full ranker, pre-ranker) trains with: the
caller supplies an epoch's batches and a batch's loss; one progress line format for all of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)
LOG_EVERY = 50  # batches between progress lines
B = TypeVar("B")


def fit(
    model: nn.Module,
    epoch_batches: Callable[[], Iterable[B]],
    batch_loss: Callable[[B], tuple[torch.Tensor, int]],
    *,
    examples: int,
    epochs: int,
    lr: float,
    label: str,
) -> list[dict[str, float]]:
    """Adam over `epochs` epochs, each iterating a fresh `epoch_batches()` of `examples` examples in
    all (its random draws happen as it is iterated, interleaved with the steps); `batch_loss` gives a
    batch's mean loss and its number of examples. Per epoch: the mean loss per example and
    examples/s, logged with progress lines every LOG_EVERY batches. Leaves the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for epoch in range(epochs):
        started, total, done = time.perf_counter(), torch.zeros(()), 0
        for b, batch in enumerate(epoch_batches(), start=1):
            loss, n = batch_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * n
            done += n
            if b % LOG_EVERY == 0:
                rate = done / (time.perf_counter() - started)
                _progress(label, epoch, epochs, done, examples, rate, float(total) / done)
        seconds = time.perf_counter() - started
        history.append({"loss": float(total) / examples, "examples_per_s": examples / seconds})
        _progress(label, epoch, epochs, examples, examples, history[-1]["examples_per_s"], history[-1]["loss"])
    model.eval()
    return history


def _progress(label: str, epoch: int, epochs: int, done: int, examples: int, rate: float, loss: float) -> None:
    log.info("%s epoch %d/%d: %d/%d examples, %.0f examples/s, loss %.4f", label, epoch + 1, epochs, done, examples,
             rate, loss)
