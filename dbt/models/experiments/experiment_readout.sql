{{ config(materialized='table') }}
-- The experiment readout: each arm against control over the whole served period, for the
-- experiment's configured metrics (experiments.metrics).
with lifts as (
    select * from {{ ref('int_experiment_lifts') }}
    where week = 0
),

experiments as (
    select experiment, metrics
    from {{ experiment_source('experiments', [('experiment', 'string'), ('metrics', 'string')]) }}
),

windows as (
    select experiment, start_day, period_end
    from {{ ref('int_experiment_windows') }}
    where week = 0
)

select
    l.experiment,
    w.start_day,
    w.period_end,
    {{ dbt.datediff('w.start_day', 'w.period_end', 'day') }} + 1 as served_days,
    {{ star_except('l', ['experiment', 'week']) }}
from lifts as l
inner join experiments as e
    on e.experiment = l.experiment and {{ list_has(comma_list('e.metrics'), 'l.metric') }}
inner join windows as w on w.experiment = l.experiment
