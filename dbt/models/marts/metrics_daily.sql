{{ config(**incremental_by('day')) }}
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
-- Every day from the lake's first to its last day of events has a row for everyone ('all', 'all')
-- and for each configured segment (segment, 'all'): dau 0 (counts 0, rates null) when no one was.
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

active_slices as (
    {{ slice_rollup('activity', 'memberships', totals) }}
),

spine as (
    select cast(s.day as date) as day
    from (
        select {{ unnest_list(day_list('first_day', 'last_day')) }} as day
        from (select min(day) as first_day, max(day) as last_day from {{ ref('stg_events') }}) as bounds
    ) as s
    where {{ day_window('cast(s.day as date)') }}
),

empty_slices as (
    select spine.day, s.segment
    from spine
    cross join (
        {%- set names = ["'all'"] %}
        {%- for segment in var('segments') %}
          {%- do names.append("'" ~ sql_identifier(segment['name']) ~ "'") %}
        {%- endfor %}
        select {{ unnest_list(dbt.array_construct(names, 'string')) }} as segment
    ) as s
    anti join (select day, segment from active_slices where experiment_bucket = 'all') as a using (day, segment)
),

-- The same columns in the same order as active_slices.
slices as (
    select * from active_slices
    union all
    select
        day, segment, 'all' as experiment_bucket, 0 as dau, 0 as new_users, 0 as sessions, 0 as impressions, 0 as clicks,
        0 as likes, 0 as favorites, 0 as shares, 0 as comments, 0 as follows, cast(0 as double) as session_duration_s,
        0 as publishing_volume, 0 as publishers
    from empty_slices
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
    session_duration_s / nullif(dau, 0) as session_duration_s_per_dau,
    publishing_volume,
    publishers,
    publishers / nullif(dau, 0) as penetration_rate
from slices
