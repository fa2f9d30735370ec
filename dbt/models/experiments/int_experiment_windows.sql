{{ config(materialized='table') }}
{%- set cuped_days = var('cuped_days', 14) | int %}

-- The windows each experiment is read over: week 0 = every served day, start .. min(end, last
-- landed day); week k >= 1 = served days [start + 7(k-1), start + 7k - 1]. The CUPED pre-period
-- is the cuped_days days before start. An experiment with no served day yet has no row.
with experiments as (
    select experiment, start_day, end_day
    from {{ experiment_source('experiments', [('experiment', 'string'), ('start_day', 'date'), ('end_day', 'date')]) }}
),

landed as (
    select max(day) as last_day from {{ ref('int_user_day_activity') }}
),

periods as (
    select
        e.experiment,
        e.start_day,
        least(coalesce(e.end_day, l.last_day), l.last_day) as period_end,
        e.start_day - {{ cuped_days }} as pre_start,
        e.start_day - 1 as pre_end
    from experiments as e
    cross join landed as l
    where e.start_day <= least(coalesce(e.end_day, l.last_day), l.last_day)
),

weeks as (
    {%- set week_count = int_div(dbt.datediff('p.start_day', 'p.period_end', 'day'), 7) ~ ' + 2' %}
    select p.*, {{ unnest_list(int_list(week_count)) }} as week
    from periods as p
)

select
    experiment,
    cast(week as integer) as week,
    case when week = 0 then start_day else start_day + cast(7 * (week - 1) as integer) end as window_start,
    case when week = 0 then period_end else least(start_day + cast(7 * week - 1 as integer), period_end) end
        as window_end,
    start_day,
    period_end,
    pre_start,
    pre_end
from weeks
