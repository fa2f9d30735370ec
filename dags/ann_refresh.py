"""ann_refresh: one faiss index per (vector model, content pool) (docs/METHODS.md "ANN indexes"), rebuilt when a pool
publishes a new version (recpipe_pool_<name>) or a vector model a new version
(recpipe_model_<name>, for each of `ann.vector_models`): the schedule is the asset expression `pool_1 | ... | model_1 | ...`. Each index task announces
recpipe_ann_indexes (the feeds DAG listens).

Each task `index_<model>__<pool>` rebuilds its index only when the pool's or the model's current
version (or the `ann:` config) changed since the current index; an approximate index whose
recall@`ann.recall_k` against exact search is under `ann.min_recall` raises a data-quality alert,
is not published, and fails the task (the previous index stays current). A model without a current
version yet is skipped. The logic lives in tasks/retrieval/ann_refresh.py and models/retrieval/ann.py.

The tasks only read the warehouse, yet run in the warehouse pool: DuckDB's file lock is
per process, so a read-only connection fails while a writer holds the file *and* makes a writer
fail while it is open. Holding the one slot for the (short) refresh keeps both sides safe.
"""

from __future__ import annotations

import functools
import operator

from airflow.sdk import dag, task

from tasks.core.config import get_config
from tasks.core.registry import ann_task_id
from tasks.orchestration.wiring import ANN_INDEXES, dag_kwargs, model_asset, pool_asset, writer_task_kwargs

cfg = get_config()
triggers = [pool_asset(p.name) for p in cfg.pools] + [model_asset(m) for m in cfg.ann.vector_models]


@dag(
    dag_id="ann_refresh",
    description="faiss index per (vector model, pool): rebuild on a new pool or model version, recall-gated",
    max_active_runs=1,
    doc_md=__doc__,
    **dag_kwargs(cfg, schedule=functools.reduce(operator.or_, triggers), tags=["retrieval", "ann", "faiss"]),
)
def ann_refresh_dag() -> None:
    for model in cfg.ann.vector_models:
        for pool in cfg.pools:

            @task(task_id=ann_task_id(model, pool.name), outlets=[ANN_INDEXES], **writer_task_kwargs(cfg))
            def index(model: str = model, pool: str = pool.name, outlet_events=None) -> dict:
                from tasks.retrieval import ann_refresh

                outcome = ann_refresh.refresh_or_fail(cfg, model, pool)
                outlet_events[ANN_INDEXES].extra = outcome
                return outcome

            index()


ann_refresh_dag()
