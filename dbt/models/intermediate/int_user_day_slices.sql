{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='day') }}

-- Every slice a metric is reported for: everyone, each experiment bucket, each segment.
with activity as (
    select user_id, day, experiment_bucket from {{ ref('int_user_day_activity') }}
    where {{ day_window('day') }}
),

segments as (
    select user_id, day, segment from {{ ref('int_user_day_segments') }}
    where {{ day_window('day') }}
),

slices as (
    select user_id, day, 'all' as segment, 'all' as experiment_bucket from activity
    union all
    select user_id, day, 'all' as segment, experiment_bucket from activity
    union all
    select user_id, day, segment, 'all' as experiment_bucket from segments
)

select * from slices
