{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='day') }}

-- One row per user and day with any event: the only model that scans the events. A run for ds
-- rebuilds day ds (partition pruning on the lake's dt).
with events as (
    select user_id, day, event_type, dwell_ms, experiment_bucket
    from {{ ref('stg_events') }}
    where {{ day_window('day') }}
),

user_day as (
    select
        day,
        user_id,
        min(experiment_bucket) as experiment_bucket,
        count(*) filter (where event_type = 'session_start') as sessions,
        coalesce(sum(dwell_ms) filter (where event_type = 'session_end'), 0) / 1000.0 as session_duration_s,
        count(*) filter (where event_type = 'impression') as impressions,
        count(*) filter (where event_type = 'click') as clicks,
        count(*) filter (where event_type = 'like') as likes,
        count(*) filter (where event_type = 'favorite') as favorites,
        count(*) filter (where event_type = 'share') as shares,
        count(*) filter (where event_type = 'comment') as comments,
        count(*) filter (where event_type = 'follow') as follows,
        count(*) filter (where event_type = 'publish') as publishes
    from events
    group by day, user_id
)

select * from user_day
