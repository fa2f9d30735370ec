{{ config(**incremental_by('day')) }}
{%- set w = var('retention_window') | int %}
{%- set activity_rel = ref('int_user_day_activity') %}
{%- set events_rel = ref('stg_events') %}
{#- Every metric is R = sum(num) / sum(den) over a bucket's users (a mean has den = 1).
    Counts are per assigned user (users of the bucket seen up to the day; inactive ones count 0),
    so buckets of different sizes compare. -#}
{%- set per_assigned_user = [
    ('dau', '1'),
    ('new_users', 'is_new'),
    ('sessions', 'sessions'),
    ('impressions', 'impressions'),
    ('clicks', 'clicks'),
    ('publishing_volume', 'publishes'),
    ('publishers', 'is_publisher'),
] %}
{%- set per_active_user = [
    ('ctr', 'clicks', 'impressions'),
    ('like_rate', 'likes', 'clicks'),
    ('favorite_rate', 'favorites', 'clicks'),
    ('share_rate', 'shares', 'clicks'),
    ('comment_rate', 'comments', 'clicks'),
    ('follow_rate', 'follows', 'clicks'),
    ('session_duration_s_per_dau', 'session_duration_s', '1'),
    ('penetration_rate', 'is_publisher', '1'),
] %}
{%- set per_cohort_user = [
    ('next_day_retention', 'active_next_day', 'next_day_complete'),
    ('lt7', 'lt7', 'lt7_complete'),
    ('lt30', 'lt30', 'lt30_complete'),
] %}

-- Per (day, bucket, metric): n users and the sums, sums of squares and cross-product of the
-- per-user numerator and denominator, from which ab_readout computes each bucket's value and the
-- delta-method variance. One pass over the activity and one over the retention rows, then one
-- row per metric. A run for ds_from..ds rebuilds days [ds_from-29, ds], like the retention rows.
with activity as (
    select
        a.*,
        cast(a.day = u.signup_day as int) as is_new,
        cast(a.publishes > 0 as int) as is_publisher
    from {{ activity_rel }} as a
    inner join {{ ref('stg_users') }} as u using (user_id)
    where {{ day_window('a.day', w - 1) }}
),

-- Each user's first day and bucket (users keep their bucket). A full build reads the activity
-- table (it holds every day); a run for ds reads the lake up to ds, so that days rebuilt in any
-- order count the same users.
first_seen as (
    select user_id, min(day) as first_day, min_by(experiment_bucket, day) as experiment_bucket
    {%- if date_var('ds') is none %}
    from {{ activity_rel }}
    {%- else %}
    from {{ events_rel }}
    where day <= date '{{ date_var("ds") }}'
    {%- endif %}
    group by user_id
),

active_sums as {{ cte_hint('materialized') }} (
    select
        day,
        experiment_bucket,
        count(*) as n
        {%- for metric, num in per_assigned_user %},
        sum({{ num }}) as {{ metric }}_num,
        sum({{ num }} * {{ num }}) as {{ metric }}_num2
        {%- endfor %}
        {%- for metric, num, den in per_active_user %},
        sum({{ num }}) as {{ metric }}_num,
        sum({{ den }}) as {{ metric }}_den,
        sum({{ num }} * {{ num }}) as {{ metric }}_num2,
        sum({{ den }} * {{ den }}) as {{ metric }}_den2,
        sum({{ num }} * {{ den }}) as {{ metric }}_numden
        {%- endfor %}
    from activity
    group by day, experiment_bucket
),

cohort_sums as {{ cte_hint('materialized') }} (
    select
        day,
        experiment_bucket,
        count(*) as n
        {%- for metric, num, flag in per_cohort_user %},
        sum({{ num }}) as {{ metric }}_num,
        sum({{ num }} * {{ num }}) as {{ metric }}_num2,
        bool_and({{ flag }}) as {{ metric }}_complete
        {%- endfor %}
    from {{ ref('int_user_day_retention') }}
    where {{ day_window('day', w - 1) }}
    group by day, experiment_bucket
),

-- A day's assigned users are those first seen on or before it: summing the users per (first
-- day, bucket) keeps this inequality join to a few rows per day instead of one per user.
first_seen_counts as (
    select first_day, experiment_bucket, count(*) as users
    from first_seen
    group by all
),

assigned as (
    select d.day, f.experiment_bucket, cast(sum(f.users) as bigint) as users
    from (select distinct day from active_sums) as d
    inner join first_seen_counts as f on f.first_day <= d.day
    group by all
),

per_assigned as {{ cte_hint('materialized') }} (
    select a.day, a.experiment_bucket, a.users, {{ star_except('s', ['day', 'experiment_bucket']) }}
    from assigned as a
    left join active_sums as s using (day, experiment_bucket)
),

moments as (
    {%- for metric, num in per_assigned_user %}
    select
        day, experiment_bucket, '{{ metric }}' as metric, 'assigned users' as population,
        users as n,
        coalesce({{ metric }}_num, 0) as s_num, users as s_den,
        coalesce({{ metric }}_num2, 0) as s_num2, users as s_den2,
        coalesce({{ metric }}_num, 0) as s_numden,
        true as is_complete
    from per_assigned
    union all
    {%- endfor %}
    {%- for metric, num, den in per_active_user %}
    select
        day, experiment_bucket, '{{ metric }}', 'active users', n,
        {{ metric }}_num, {{ metric }}_den, {{ metric }}_num2, {{ metric }}_den2, {{ metric }}_numden,
        true
    from active_sums
    union all
    {%- endfor %}
    {%- for metric, num, flag in per_cohort_user %}
    select
        day, experiment_bucket, '{{ metric }}', 'active users', n,
        {{ metric }}_num, n, {{ metric }}_num2, n, {{ metric }}_num,
        {{ metric }}_complete
    from cohort_sums
    {{- " union all" if not loop.last }}
    {%- endfor %}
)

select
    day,
    experiment_bucket,
    metric,
    population,
    n,
    cast(s_num as double) as s_num,
    cast(s_den as double) as s_den,
    cast(s_num2 as double) as s_num2,
    cast(s_den2 as double) as s_den2,
    cast(s_numden as double) as s_numden,
    is_complete
from moments
