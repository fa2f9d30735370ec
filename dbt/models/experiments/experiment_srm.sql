{{ config(materialized='table') }}
{%- set alpha = var('srm_alpha', 0.001) %}

-- Sample-ratio mismatch: per experiment, the assigned users per arm (the analysis population: every
-- assigned user who signed up by the window's end) against an equal split over its arms, Pearson's
-- chi-square with (arms - 1) degrees of freedom; is_mismatch flags p < srm_alpha. One row per
-- (experiment, arm); the test columns repeat on each arm's row. The same test over the users active
-- in the served period (chi_square, p_value) is a diagnostic only: an arm that changes who comes
-- back departs from the split by its very effect, so it raises no alert.
with experiments as (
    select experiment, arms
    from {{ experiment_source('experiments', [('experiment', 'string'), ('arms', 'string')]) }}
),

arms as (
    select experiment, {{ unnest_list(comma_list('arms')) }} as arm
    from experiments
),

users as (
    select experiment, arm, count(*) as assigned_users, count(*) filter (where active_days > 0) as active_users
    from {{ ref('int_experiment_users') }}
    where week = 0
    group by all
),

observed as (
    select
        a.experiment,
        a.arm,
        coalesce(u.assigned_users, 0) as assigned_users,
        coalesce(u.active_users, 0) as active_users,
        sum(coalesce(u.active_users, 0)) over (partition by a.experiment) as total_active_users,
        sum(coalesce(u.assigned_users, 0)) over (partition by a.experiment) as total_assigned_users,
        count(*) over (partition by a.experiment) as n_arms
    from arms as a
    inner join (select distinct experiment from users) as served using (experiment)
    left join users as u using (experiment, arm)
),

expected as (
    select *, total_active_users / n_arms as expected_users
    from observed
    where total_active_users > 0
),

tested as (
    select
        *,
        sum(power(active_users - expected_users, 2) / expected_users) over (partition by experiment) as chi_square,
        sum(power(assigned_users - total_assigned_users / n_arms, 2) / (total_assigned_users / n_arms))
            over (partition by experiment) as assigned_chi_square
    from expected
)

select
    experiment,
    arm,
    assigned_users,
    active_users,
    expected_users,
    active_users / total_active_users as active_share,
    total_active_users,
    n_arms,
    n_arms - 1 as df,
    chi_square,
    {{ chi2_sf('chi_square', 'n_arms - 1') }} as p_value,
    {{ chi2_sf('assigned_chi_square', 'n_arms - 1') }} < {{ alpha }} as is_mismatch,
    assigned_chi_square,
    {{ chi2_sf('assigned_chi_square', 'n_arms - 1') }} as assigned_p_value
from tested
