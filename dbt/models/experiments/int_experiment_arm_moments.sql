{{ config(materialized='table') }}
{%- set cuped_days = var('cuped_days', 14) | int %}
{#- (metric, kind, per-user numerator, denominator, CUPED covariate). A mean has denominator 1; the
    covariate of a mean is the same metric over the pre-period, of a ratio the pre-period active
    days (both per pre-period day). -#}
{%- set metrics = [
    ('dau', 'mean', 'active_days / window_days', '1', 'pre_active_days'),
    ('session_duration_s', 'mean', 'session_duration_s / window_days', '1', 'pre_session_duration_s'),
    ('clicks', 'mean', 'clicks / window_days', '1', 'pre_clicks'),
    ('follows', 'mean', 'follows / window_days', '1', 'pre_follows'),
    ('penetration_rate', 'ratio', 'publisher_days', 'active_days', 'pre_active_days'),
    ('next_day_retention', 'ratio', 'next_day_active', 'next_day_days', 'pre_active_days'),
    ('lt7', 'ratio', 'lt7_sum', 'lt7_days', 'pre_active_days'),
] %}

-- Per (experiment, window, metric, arm): the metric R = sum(num) / sum(den) over the arm's users,
-- and the sample moments of its linearisation l = (num - R den) / mean(den) (delta method; for a
-- mean, l = y - mean(y)) and of the covariate x, from which int_experiment_lifts derives the plain
-- and CUPED estimates.
with user_values as (
    {%- for metric, kind, num, den, x in metrics %}
    select
        experiment, week, arm, user_id,
        '{{ metric }}' as metric,
        '{{ kind }}' as kind,
        cast({{ num }} as double) as num,
        cast({{ den }} as double) as den,
        cast({{ x }} as double) / {{ cuped_days }} as x
    from {{ ref('int_experiment_users') }}
    {{- "\n    union all" if not loop.last }}
    {%- endfor %}
),

sums as (
    select
        experiment,
        week,
        metric,
        kind,
        arm,
        count(*) as n,
        sum(num) as sum_num,
        sum(den) as sum_den,
        avg(den) as mean_den,
        avg(x) as mean_x,
        var_samp(num) as var_num,
        var_samp(den) as var_den,
        var_samp(x) as var_x,
        covar_samp(num, den) as cov_num_den,
        covar_samp(num, x) as cov_num_x,
        covar_samp(den, x) as cov_den_x
    from user_values
    group by all
),

ratios as (
    select *, sum_num / nullif(sum_den, 0) as value
    from sums
)

select
    experiment,
    week,
    metric,
    kind,
    arm,
    n,
    sum_num,
    sum_den,
    value,
    mean_x,
    greatest(var_num - 2 * value * cov_num_den + value * value * var_den, 0) / nullif(mean_den * mean_den, 0) as var_lin,
    (cov_num_x - value * cov_den_x) / nullif(mean_den, 0) as cov_lin_x,
    var_x
from ratios
