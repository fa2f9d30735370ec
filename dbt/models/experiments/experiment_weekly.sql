{{ config(materialized='table') }}
-- Short vs long term: the readout per week since the experiment started (week 1 = its first 7
-- served days; the last week may be partial), for the experiment's configured metrics.
with lifts as (
    select * from {{ ref('int_experiment_lifts') }}
    where week > 0
),

experiments as (
    select experiment, metrics
    from {{ experiment_source('experiments', [('experiment', 'string'), ('metrics', 'string')]) }}
),

windows as (
    select experiment, week, window_start, window_end
    from {{ ref('int_experiment_windows') }}
)

select
    l.experiment,
    l.week,
    w.window_start,
    w.window_end,
    {{ dbt.datediff('w.window_start', 'w.window_end', 'day') }} + 1 as window_days,
    {{ star_except('l', ['experiment', 'week']) }}
from lifts as l
inner join experiments as e
    on e.experiment = l.experiment and {{ list_has(comma_list('e.metrics'), 'l.metric') }}
inner join windows as w on w.experiment = l.experiment and w.week = l.week
