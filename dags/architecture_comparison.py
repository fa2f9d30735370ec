"""architecture_comparison: the aged ("old soup") model protocols of docs/METHODS.md "Aged-model protocols" for the full
ranker, run by hand (no schedule).

Params: `day` (the evaluation day, YYYY-MM-DD; required), `days` (n: training on the n days before
it, 1 epoch, oldest first), `embeddings` (`reuse` the aged model's or `random`; compare only),
`candidate` (a JSON object of overrides of ranking.full's embedding_dim, experts, expert_hidden,
tower_hidden, interaction, match_counts, sequence_length) and `protocol`:

- `compare`: the current and the candidate architecture trained from the same start (dense layers
  random from one seed, embeddings random or reused from the aged model), both evaluated on `day`;
  ranks architectures;
- `catch_up`: the candidate architecture from the aged model's embeddings, distilled from it
  ((y + p_old) / 2), against the aged model on `day`.

Tasks: `prepare` checks the params and builds the missing ranking_exposures of the window and
`day` (dbt); `run` trains and evaluates the arms, writes the AUCs per head to the
`architecture_comparison` table (a re-run of a (day, protocol) replaces its rows) and returns the
summary (the winner by mean AUC). Trained arms go to a throwaway store under
<artifacts>/experiments/, never the registry; the registry's current full ranker (the aged model)
is only read. Logic: tasks/ranking/aged_protocols.py.

`airflow dags trigger architecture_comparison --conf '{"day": "2026-01-12", "days": 3,
"protocol": "compare", "embeddings": "reuse", "candidate": {"experts": 2}}'`
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from tasks.core.config import ARCHITECTURE_KEYS, EMBEDDINGS, EMBEDDINGS_DEFAULT, PROTOCOLS, get_config
from tasks.orchestration.wiring import dag_kwargs, writer_task_kwargs

cfg = get_config()


@dag(
    dag_id="architecture_comparison",
    description="Full ranker: candidate vs current architecture from the same start, or catch-up with the aged model",
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "day": Param(None, type=["null", "string"], format="date", description="evaluation day (required)"),
        "days": Param(cfg.ranking.architecture_comparison.days, type="integer", minimum=1,
                      description="training days before `day` (n)"),
        "embeddings": Param(EMBEDDINGS_DEFAULT, type="string", enum=list(EMBEDDINGS),
                            description="compare: reuse the aged model's embeddings, or random"),
        "candidate": Param({}, type="object", description=f"overrides of {', '.join(ARCHITECTURE_KEYS)}"),
        "protocol": Param("compare", type="string", enum=list(PROTOCOLS)),
    },
    **dag_kwargs(cfg, schedule=None, tags=["ranking", "experiment"]),
)
def architecture_comparison_dag() -> None:
    @task(**writer_task_kwargs(cfg))  # dbt writes ranking_exposures
    def prepare(params=None) -> dict:
        from tasks.ranking import aged_protocols as ac

        settings = ac.resolve_params(cfg, params)
        built = ac.ensure_exposures(cfg, dt.date.fromisoformat(settings["day"]), settings["days"])
        return {**settings, "exposures_built": built}

    @task(**writer_task_kwargs(cfg))  # writes the architecture_comparison table
    def run(settings: dict) -> dict:
        from tasks.ranking import aged_protocols as ac

        return ac.run(cfg, settings)

    run(prepare())


architecture_comparison_dag()
