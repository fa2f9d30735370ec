"""The Adam epoch loop every embedding model (two-tower, full ranker, pre-ranker) trains with, the
epoch order of the examples, and data-parallel training over processes (torch.distributed, gloo).

The caller supplies an epoch's batches and a batch's loss; one progress line format for all.

Data parallel (docs/SCALE.md "Training that streams"): `run` starts `processes` processes in one
gloo group; all of them cut the same global batches (same seed), each takes its contiguous share
of every batch's rows (`shard`) and encodes only those; `gather_rows` joins the shares, so every
rank evaluates the same loss of the whole batch. DistributedDataParallel averages the gradients
over ranks, and `gather_rows` gives each rank `world` times the gradient of its own rows, so the
averaged gradient is the single-process gradient of the batch.
"""

from __future__ import annotations

import logging
import pickle
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)
LOG_EVERY = 50  # batches between progress lines
B = TypeVar("B")
R = TypeVar("R")


class _Objective(nn.Module):
    """The model with a batch's loss as its forward pass (what DistributedDataParallel wraps)."""

    def __init__(self, model: nn.Module, batch_loss: Callable[[Any], tuple[torch.Tensor, int]]):
        super().__init__()
        self.model, self.batch_loss = model, batch_loss

    def forward(self, batch: Any) -> tuple[torch.Tensor, int]:
        return self.batch_loss(batch)


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
    """Adam (`optimizers`) over `epochs` epochs, each iterating a fresh `epoch_batches()` of `examples` examples in
    all (its random draws happen as it is iterated, interleaved with the steps); `batch_loss` gives a
    batch's mean loss and its number of examples (in a process group: the whole batch's, the same
    on every rank, the model wrapped in DistributedDataParallel). Per epoch: the mean loss per
    example and examples/s, logged with progress lines every LOG_EVERY batches. Leaves the model in
    eval mode."""
    objective: nn.Module = _Objective(model, batch_loss)
    if dist.is_initialized():
        objective = DistributedDataParallel(objective)
    steppers = optimizers(model, lr)
    objective.train()
    history = []
    for epoch in range(epochs):
        started, total, done = time.perf_counter(), torch.zeros(()), 0
        for b, batch in enumerate(epoch_batches(), start=1):
            loss, n = objective(batch)
            for opt in steppers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in steppers:
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


def optimizers(model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """The optimizers of one step: lazy Adam (torch's SparseAdam) over the weights of the
    sparse-gradient embeddings, updating the rows and moments a batch touched, so a step costs the
    batch, not the vocabulary; Adam over the other parameters (each only when it has some)."""
    sparse = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = ((torch.optim.SparseAdam, [p for p in params if id(p) in sparse]),
              (torch.optim.Adam, [p for p in params if id(p) not in sparse]))
    return [kind(group, lr=lr) for kind, group in groups if group]


def _progress(label: str, epoch: int, epochs: int, done: int, examples: int, rate: float, loss: float) -> None:
    log.info("%s epoch %d/%d: %d/%d examples, %.0f examples/s, loss %.4f", label, epoch + 1, epochs, done, examples,
             rate, loss)


# --- epoch order and shards ----------------------------------------------------------------------


def day_order(day: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of row positions: days oldest first, shuffled within a day (one draw
    per row), cut every `batch_size` rows (a batch may span two days)."""
    order = np.lexsort((rng.random(len(day)), day))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shares(n: int, world: int) -> tuple[int, ...]:
    """Rows of an n-row batch per rank: contiguous blocks, the first n % world ranks one row more."""
    return tuple(n // world + (r < n % world) for r in range(world))


def shard(batches: Sequence[np.ndarray], rank: int, world: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """This rank's rows of every batch (its `shares` block), concatenated, and for each batch the
    positions of its block in them. One process: all rows, batch after batch."""
    blocks, local, start = [], [], 0
    for batch in batches:
        counts = shares(len(batch), world)
        lo = sum(counts[:rank])
        blocks.append(batch[lo : lo + counts[rank]])
        local.append(np.arange(start, start + counts[rank]))
        start += counts[rank]
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.int64)), local


class _GatherRows(torch.autograd.Function):
    """The ranks' row blocks concatenated in rank order; backward: `world` x the gradient of this
    rank's block (each rank computes the same loss of the gathered rows, so each holds the same
    gradient of them; DistributedDataParallel then averages over the ranks)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
        rank, world = dist.get_rank(), dist.get_world_size()
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.start, ctx.count, ctx.world = sum(counts[:rank]), counts[rank], world
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad[ctx.start : ctx.start + ctx.count] * ctx.world, None


def gather_rows(local: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """(sum(counts), ...) every rank's rows of a batch (rank r holds counts[r] rows), differentiable;
    `local` itself with one process."""
    return local if len(counts) == 1 else _GatherRows.apply(local, counts)


# --- processes ------------------------------------------------------------------------------------


def run(processes: int, fn: Callable[..., R], *args: Any) -> R:
    """fn(*args) here (processes == 1), or in `processes` spawned processes joined in a gloo group
    on 127.0.0.1 (a free port), each with its share of this process's torch threads; rank 0's
    return value (tensors, numbers and containers of them), handed back through a file. The
    arguments reach every process as a private copy (pickled to bytes: torch.multiprocessing would
    put their tensors in memory shared by the processes, each rank's optimizer stepping them)."""
    if processes == 1:
        return fn(*args)
    threads = max(1, torch.get_num_threads() // processes)
    payload = pickle.dumps((fn, args))
    with tempfile.TemporaryDirectory(prefix="recpipe-ddp-") as tmp:
        out = Path(tmp) / "rank0.pt"
        mp.spawn(_rank_main, args=(processes, _free_port(), threads, out, payload), nprocs=processes, join=True)
        return torch.load(out, weights_only=True)


def _rank_main(rank: int, world: int, port: int, threads: int, out: Path, payload: bytes) -> None:
    torch.set_num_threads(threads)
    fn, args = pickle.loads(payload)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
