{{ config(**incremental_by('day')) }}
{%- set windows = low_activity_windows() %}
{%- set activity_rel = ref('int_user_day_activity') %}
{%- set events_rel = ref('stg_events') %}

-- Which configured segments each active user is in on each day (segment_predicate renders them).
with user_days as (
    {%- if not windows %}
    select user_id, day from {{ activity_rel }}
    {%- else %}
    -- With the days before, for low_activity. A full build reads the activity table (it holds
    -- every day); a run for ds reads the lake, so that days rebuilt in any order see the same
    -- history (its user-days on ds_from..ds are the activity table's).
    -- The frame runs over day numbers (integers): a RANGE frame over a date orders by the day
    -- cast to a timestamp and steps through it with interval arithmetic, both slower.
    select
        user_id,
        day
        {%- for w in windows %},
        count(*) over (partition by user_id order by day_number range between {{ w }} preceding and 1 preceding)
            as prior_active_days_{{ w }}
        {%- endfor %}
    from (
        {%- if date_var('ds') is none %}
        select user_id, day, {{ day_number('day') }} as day_number from {{ activity_rel }}
        {%- else %}
        select distinct user_id, day, {{ day_number('day') }} as day_number from {{ events_rel }}
        where {{ day_window('day', windows | max) }}
        {%- endif %}
    ) as days_with_numbers
    {%- endif %}
),

inputs as (
    select
        d.*,
        {{ dbt.datediff('u.signup_day', 'd.day', 'day') }} as days_since_signup,
        u.gender,
        u.age_bucket,
        u.city_tier
    from user_days as d
    inner join {{ ref('stg_users') }} as u using (user_id)
    where {{ day_window('d.day') }}
),

memberships as (
    select
        user_id,
        day,
        {%- set memberships = [] %}
        {%- for segment in var('segments') %}
          {%- do memberships.append(
                "case when " ~ segment_predicate(segment) ~ " then '" ~ sql_identifier(segment['name']) ~ "' end") %}
        {%- endfor %}
        {{ unnest_list(dbt.array_construct(memberships, 'string')) }} as segment
    from inputs
)

select user_id, day, segment from memberships
where segment is not null
