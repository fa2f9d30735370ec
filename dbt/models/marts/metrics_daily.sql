{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='day') }}

-- PLAYBOOK §1 daily metrics per slice. A run for ds replaces day ds.
with slices as (
    select user_id, day, segment, experiment_bucket as slice_bucket
    from {{ ref('int_user_day_slices') }}
    where {{ day_window('day') }}
),

activity as (
    select * from {{ ref('int_user_day_activity') }}
    where {{ day_window('day') }}
),

users as (
    select user_id, signup_day from {{ ref('stg_users') }}
),

joined as (
    select
        s.day,
        s.segment,
        s.slice_bucket,
        a.* exclude (day, user_id, experiment_bucket),
        u.signup_day = s.day as is_new
    from slices as s
    inner join activity as a using (user_id, day)
    inner join users as u using (user_id)
),

totals as (
    select
        day,
        segment,
        slice_bucket as experiment_bucket,
        count(*) as dau,
        count(*) filter (where is_new) as new_users,
        cast(sum(sessions) as bigint) as sessions,
        cast(sum(impressions) as bigint) as impressions,
        cast(sum(clicks) as bigint) as clicks,
        cast(sum(likes) as bigint) as likes,
        cast(sum(favorites) as bigint) as favorites,
        cast(sum(shares) as bigint) as shares,
        cast(sum(comments) as bigint) as comments,
        cast(sum(follows) as bigint) as follows,
        sum(session_duration_s) as session_duration_s,
        cast(sum(publishes) as bigint) as publishing_volume,
        count(*) filter (where publishes > 0) as publishers
    from joined
    group by day, segment, slice_bucket
)

select
    day,
    segment,
    experiment_bucket,
    dau,
    new_users,
    sessions,
    impressions,
    clicks,
    likes,
    favorites,
    shares,
    comments,
    follows,
    clicks / nullif(impressions, 0) as ctr,
    likes / nullif(clicks, 0) as like_rate,
    favorites / nullif(clicks, 0) as favorite_rate,
    shares / nullif(clicks, 0) as share_rate,
    comments / nullif(clicks, 0) as comment_rate,
    follows / nullif(clicks, 0) as follow_rate,
    session_duration_s,
    session_duration_s / dau as session_duration_s_per_dau,
    publishing_volume,
    publishers,
    publishers / dau as penetration_rate
from totals
