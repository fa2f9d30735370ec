{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='day') }}
{%- set totals %}
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
{%- endset %}

-- docs/METHODS.md "DAU and daily engagement" daily metrics per slice: everyone and each bucket (grouping sets over the active
-- user-days), each segment (its memberships). A run for ds_from..ds replaces those days.
with activity as (
    select a.*, a.day = u.signup_day as is_new
    from {{ ref('int_user_day_activity') }} as a
    inner join {{ ref('stg_users') }} as u using (user_id)
    where {{ day_window('a.day') }}
),

memberships as (
    select user_id, day, segment from {{ ref('int_user_day_segments') }}
    where {{ day_window('day') }}
),

slices as (
    {{ slice_rollup('activity', 'memberships', totals) }}
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
from slices
