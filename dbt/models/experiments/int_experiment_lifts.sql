{{ config(materialized='table') }}
-- Each arm against its experiment's control, per window (week 0 = the whole served period) and
-- metric: the plain difference (Welch / delta-method standard error, normal 95% CI and two-sided
-- p-value) and the CUPED one, with theta pooled within arms over all the experiment's arms.
-- A metric whose denominator is still 0 in the arm or the control (no landed window yet) has no row.
with moments as (
    select * from {{ ref('int_experiment_arm_moments') }}
),

experiments as (
    select experiment, control_arm
    from {{ experiment_source('experiments', [('experiment', 'string'), ('control_arm', 'string')]) }}
),

-- theta = pooled within-arm cov(l, x) / pooled within-arm var(x); 0 when x does not vary.
theta as (
    select
        experiment,
        week,
        metric,
        coalesce(
            sum((n - 1) * cov_lin_x) / nullif(sum((n - 1) * var_x), 0), 0
        ) as theta
    from moments
    where n > 1 and value is not null
    group by all
),

arms as (
    select
        m.*,
        t.theta,
        m.var_lin / m.n as var_value,
        greatest(m.var_lin - 2 * t.theta * m.cov_lin_x + t.theta * t.theta * m.var_x, 0) / m.n as var_cuped
    from moments as m
    inner join theta as t using (experiment, week, metric)
),

compared as (
    select
        a.experiment,
        a.week,
        a.metric,
        a.kind,
        a.arm,
        c.arm as control_arm,
        c.value as control_value,
        a.value as arm_value,
        a.value - c.value as diff,
        (a.value - c.value) / nullif(c.value, 0) as rel_lift,
        sqrt(a.var_value + c.var_value) as se,
        a.theta,
        a.value - c.value - a.theta * (a.mean_x - c.mean_x) as cuped_diff,
        sqrt(a.var_cuped + c.var_cuped) as cuped_se,
        c.n as n_control,
        a.n as n_arm
    from arms as a
    inner join experiments as e on e.experiment = a.experiment and a.arm <> e.control_arm
    inner join arms as c
        on c.experiment = a.experiment and c.week = a.week and c.metric = a.metric and c.arm = e.control_arm
    where a.value is not null and c.value is not null
)

select
    experiment,
    week,
    metric,
    kind,
    arm,
    control_arm,
    control_value,
    arm_value,
    diff,
    rel_lift,
    se,
    diff - {{ z975() }} * se as ci_low,
    diff + {{ z975() }} * se as ci_high,
    case when se > 0 then {{ normal_p_value('diff / se') }} end as p_value,
    theta,
    cuped_diff,
    cuped_diff / nullif(control_value, 0) as cuped_rel_lift,
    cuped_se,
    cuped_diff - {{ z975() }} * cuped_se as cuped_ci_low,
    cuped_diff + {{ z975() }} * cuped_se as cuped_ci_high,
    case when cuped_se > 0 then {{ normal_p_value('cuped_diff / cuped_se') }} end as cuped_p_value,
    2 * {{ z975() }} * se as ci_width,
    2 * {{ z975() }} * cuped_se as cuped_ci_width,
    n_control,
    n_arm
from compared
