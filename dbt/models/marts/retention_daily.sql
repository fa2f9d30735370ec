{{ config(**incremental_by('day')) }}
{%- set w = var('retention_window') | int %}
{%- set cohort %}
        count(*) as cohort_users,
        avg(active_next_day) as next_day_retention,
        avg(lt7) as lt7,
        avg(lt30) as lt30,
        bool_and(next_day_complete) as next_day_complete,
        bool_and(lt7_complete) as lt7_complete,
        bool_and(lt30_complete) as lt30_complete
{%- endset %}

-- Next-day retention, LT7 and LT30 per slice, over the users active on the day. A run for
-- ds_from..ds refreshes days [ds_from-29, ds], the ones whose windows it completes or changes.
-- per_user is read twice (everyone and the buckets; the segments): scanning the table twice is
-- cheaper than copying its rows into a materialized CTE.
with per_user as {{ cte_hint('not materialized') }} (
    select * from {{ ref('int_user_day_retention') }}
    where {{ day_window('day', w - 1) }}
),

memberships as (
    select user_id, day, segment from {{ ref('int_user_day_segments') }}
    where {{ day_window('day', w - 1) }}
),

slices as (
    {{ slice_rollup('per_user', 'memberships', cohort) }}
)

select * from slices
