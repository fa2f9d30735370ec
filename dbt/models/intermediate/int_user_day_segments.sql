{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='day') }}
{%- set windows = low_activity_windows() %}
{%- set activity_rel = ref('int_user_day_activity') %}
{%- set events_rel = ref('stg_events') %}

-- Which configured segments each active user is in on each day (segment_predicate renders them).
with activity as (
    select user_id, day from {{ activity_rel }}
    where {{ day_window('day') }}
),
{%- if windows %}

-- Activity before the day, for low_activity. A full build reads the activity table (it holds
-- every day); a run for ds reads the lake, so that days rebuilt in any order see the same history.
history as (
    {%- if date_var('ds') is none %}
    select user_id, day from {{ activity_rel }}
    {%- else %}
    select distinct user_id, day from {{ events_rel }}
    where {{ day_window('day', windows | max) }}
    {%- endif %}
),

prior_activity as (
    select
        user_id,
        day
        {%- for w in windows %},
        count(*) over (
            partition by user_id order by day
            range between interval {{ w }} day preceding and interval 1 day preceding
        ) as prior_active_days_{{ w }}
        {%- endfor %}
    from history
),
{%- endif %}

inputs as (
    select
        a.user_id,
        a.day,
        datediff('day', u.signup_day, a.day) as days_since_signup,
        u.gender,
        u.age_bucket,
        u.city_tier
        {%- for w in windows %},
        p.prior_active_days_{{ w }}
        {%- endfor %}
    from activity as a
    inner join {{ ref('stg_users') }} as u using (user_id)
    {%- if windows %}
    inner join prior_activity as p using (user_id, day)
    {%- endif %}
),

memberships as (
    {%- for segment in var('segments') %}
    select user_id, day, '{{ sql_identifier(segment["name"]) }}' as segment
    from inputs
    where {{ segment_predicate(segment) }}
    {{ "union all" if not loop.last }}
    {%- else %}
    select user_id, day, cast(null as varchar) as segment from inputs where false
    {%- endfor %}
)

select * from memberships
