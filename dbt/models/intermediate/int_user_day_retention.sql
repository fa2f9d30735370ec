{{ config(**incremental_by('day')) }}
{%- set w = var('retention_window') | int %}

-- Per user active on day d: LT7 = days active in [d, d+6], LT30 = in [d, d+29], and whether d+1
-- was active. A run for ds_from..ds rebuilds the cohort days [ds_from-29, ds] (the ones those days
-- complete or change), reading activity up to ds+29 so that rebuilding an old day sees the days
-- after it; any order of runs thus ends with the rows of a full build.
with active_days as (
    -- The windows run over day numbers (integers): RANGE frames over a date order by the day
    -- cast to a timestamp, a second sort next to lead()'s; over day_number all three windows
    -- share one sort, and the frame bounds are integer steps.
    select user_id, day, experiment_bucket, {{ day_number('day') }} as day_number
    from {{ ref('int_user_day_activity') }}
    where {{ day_window('day', w - 1, w - 1) }}
),

-- A day has landed once it is in the activity table (built from the lake): windows reaching past
-- the last built day are partial, and flagged so.
landed as (
    select max(day) as last_day from {{ ref('int_user_day_activity') }}
),

windows as (
    select
        user_id,
        day,
        experiment_bucket,
        count(*) over (partition by user_id order by day_number range between current row and 6 following) as lt7,
        count(*) over (partition by user_id order by day_number range between current row and {{ w - 1 }} following)
            as lt30,
        cast(coalesce(lead(day_number) over (partition by user_id order by day_number) = day_number + 1, false) as int)
            as active_next_day
    from active_days
)

select
    windows.user_id,
    windows.day,
    windows.experiment_bucket,
    windows.lt7,
    windows.lt30,
    windows.active_next_day,
    landed.last_day >= windows.day + 1 as next_day_complete,
    landed.last_day >= windows.day + 6 as lt7_complete,
    landed.last_day >= windows.day + {{ w - 1 }} as lt30_complete
from windows
cross join landed
where {{ day_window('windows.day', w - 1) }}
