{%- set control = var('buckets')[0] %}

-- Each bucket against control, per day and metric. A metric is R = sum(num) / sum(den) over the
-- bucket's users; its variance by the delta method is
--   Var(R) = (var(num) - 2 R cov(num, den) + R^2 var(den)) / (n * mean(den)^2)
-- (sample (co)variances); buckets are independent, so Var(diff) = Var(R_bucket) + Var(R_control).
with moments as (
    select * from {{ ref('int_ab_moments') }}
),

estimates as (
    select
        day,
        experiment_bucket,
        metric,
        population,
        n,
        is_complete,
        s_num / nullif(s_den, 0) as value,
        (s_num2 - s_num * s_num / n) / nullif(n - 1, 0) as var_num,
        (s_den2 - s_den * s_den / n) / nullif(n - 1, 0) as var_den,
        (s_numden - s_num * s_den / n) / nullif(n - 1, 0) as cov_numden,
        s_den / n as mean_den
    from moments
),

with_variance as (
    select
        *,
        greatest(var_num - 2 * value * cov_numden + value * value * var_den, 0)
            / nullif(n * mean_den * mean_den, 0) as var_value
    from estimates
),

compared as (
    select
        b.day,
        b.metric,
        b.experiment_bucket,
        b.population,
        c.value as control_value,
        b.value as bucket_value,
        b.value - c.value as diff,
        (b.value - c.value) / nullif(c.value, 0) as rel_lift,
        sqrt(b.var_value + c.var_value) as se_diff,
        c.n as n_control,
        b.n as n_bucket,
        b.is_complete and c.is_complete as is_complete
    from with_variance as b
    inner join with_variance as c
        on c.day = b.day and c.metric = b.metric and c.experiment_bucket = {{ sql_string(control) }}
    where b.experiment_bucket <> {{ sql_string(control) }}
)

select
    day,
    metric,
    experiment_bucket,
    population,
    control_value,
    bucket_value,
    diff,
    rel_lift,
    se_diff,
    diff - 1.959964 * se_diff as ci_low,
    diff + 1.959964 * se_diff as ci_high,
    n_control,
    n_bucket,
    is_complete
from compared
