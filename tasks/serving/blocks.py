"""Feeds of many users (docs/METHODS.md "Batch feeds"): the funnel in blocks of BLOCK_USERS users,
in worker processes when `serving.processes` > 1 - the nightly batch feeds and the closed loop's
served feeds alike.

The workers are forked from the process that loaded the serving context, so they share it
copy-on-write (models, indexes, tables: nothing is reloaded or pickled); each runs on one thread
(torch, faiss, BLAS), so two workers use two cores instead of both oversubscribing them. A worker
ends on SIGTERM whatever handler the parent has: an Airflow task runner installs one, and a worker
that inherited it outlived Pool.terminate, blocked on the queue lock the pool holds while the parent
waited for it forever (a served day of the closed loop hung so). After the last block the workers
end on the pool's sentinel (close, join); terminate is for an abandoned iteration. Blocks
come back in order and every draw is seeded per (day, strategy, user), so the feeds are the same
whatever the number of processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterator, Sequence

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from tasks.core.config import StrategyConfig
from tasks.serving.context import ServingContext
from tasks.serving.funnel import Feeds, recommend

log = logging.getLogger(__name__)
BLOCK_USERS = 500

Group = tuple[str, StrategyConfig | None, np.ndarray]  # (strategy label, its config or None: the named one, user ids)
_context: ServingContext | None = None  # the forked workers' context (set in the parent just before the fork)


def feeds_in_blocks(ctx: ServingContext, groups: Sequence[Group], processes: int = 1) -> Iterator[tuple[str, np.ndarray, Feeds]]:
    """`recommend` for every group's users in blocks of BLOCK_USERS: (label, the block's users,
    its Feeds) in order, computed in `processes` forked workers when more than one (and more than
    one block; a daemon process, which may not have children, computes them itself)."""
    jobs = [(label, config, users[lo : lo + BLOCK_USERS])
            for label, config, users in groups for lo in range(0, len(users), BLOCK_USERS)]
    workers = min(processes, len(jobs))
    if workers <= 1 or multiprocessing.current_process().daemon:
        for label, config, users in jobs:
            yield label, users, recommend(ctx, users, label, config=config)
        return
    global _context
    _context = ctx
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_setup) as pool:
            log.info("feeds: %d blocks in %d worker processes", len(jobs), workers)
            for (label, _, users), feeds in zip(jobs, pool.imap(_run, jobs)):
                yield label, users, feeds
            pool.close()
            pool.join()
    finally:
        _context = None


def _worker_setup() -> None:
    """A worker: the default SIGTERM action (module docstring), one thread."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


def _run(job: Group) -> Feeds:
    label, config, users = job
    assert _context is not None, "feeds_in_blocks sets the context before forking"
    return recommend(_context, users, label, config=config)
