"""feeds: the next day's feeds of every user expected back (docs/METHODS.md "Batch feeds"), through
the recommendation path over the artifacts current now: each batch strategy, in blocks of users;
a GX suite (feed length, no duplicate / seen / expired item, spacing rules, exploration share,
every strategy present) before the version's pointer moves; rows in the warehouse table `feeds`.

Scheduled on what the feeds read: a new ANN index (recpipe_ann_indexes, after a pool or the
two-tower changed) or a new full ranker or pre-ranker (recpipe_model_*). A night with several such
events runs it more than once; each run replaces the day's feeds (same inputs, same feeds).

Run it by hand for the data through a day: trigger with config {"day": "2026-01-30"}, or
`recpipe feeds --day 2026-01-30`. The logic lives in tasks/serving/batch.py.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from tasks.core.config import get_config
from tasks.orchestration.wiring import ANN_INDEXES, FEEDS, dag_kwargs, model_asset, writer_task_kwargs

cfg = get_config()


@dag(
    dag_id="feeds",
    description="recommendation path -> next day's feeds per strategy -> GX -> publish (pointer) + feeds table",
    max_active_runs=1,
    doc_md=__doc__,
    params={"day": Param(None, type=["null", "string"], format="date",
                         description="last day of data (default: the latest loaded)")},
    **dag_kwargs(cfg, schedule=ANN_INDEXES | model_asset("full_ranking") | model_asset("preranking"),
                 tags=["serving", "feeds", "gx"]),
)
def feeds_dag() -> None:
    # Reads the warehouse, then writes the feeds table: in the one-slot writer pool.
    @task(outlets=[FEEDS], **writer_task_kwargs(cfg))
    def publish(params=None, outlet_events=None) -> dict:
        from tasks.serving import batch  # lazy: torch, faiss and GX would add ~8 s to every parse of this file
        from tasks.serving.context import last_data_day  # lazy: as above

        day = dt.date.fromisoformat(params["day"]) if (params or {}).get("day") else last_data_day(cfg)
        summary = batch.run(cfg, day)
        outlet_events[FEEDS].extra = {"day": summary["day"], "version": summary["version"]}
        return summary

    publish()


feeds_dag()
