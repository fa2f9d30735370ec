{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='day') }}
{%- set w = var('retention_window') | int %}

with per_user as (
    select * from {{ ref('int_user_day_retention') }}
    where {{ day_window('day', w - 1) }}
),

slices as (
    select user_id, day, segment, experiment_bucket from {{ ref('int_user_day_slices') }}
    where {{ day_window('day', w - 1) }}
)

select
    s.day,
    s.segment,
    s.experiment_bucket,
    count(*) as cohort_users,
    avg(p.active_next_day) as next_day_retention,
    avg(p.lt7) as lt7,
    avg(p.lt30) as lt30,
    bool_and(p.next_day_complete) as next_day_complete,
    bool_and(p.lt7_complete) as lt7_complete,
    bool_and(p.lt30_complete) as lt30_complete
from slices as s
inner join per_user as p using (user_id, day)
group by s.day, s.segment, s.experiment_bucket
