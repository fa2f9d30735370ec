{{ config(materialized='table') }}
{%- set low_max = var('low_activity_max_pre_days', 3) | int %}

-- docs/METHODS.md §1 caveats per arm against control, over the whole served period:
-- dau_up_lt7_down: DAU significantly up (CI above 0) while LT7 is down (point estimate);
-- lt_up_from_fewer_low_activity: LT7 or next-day retention significantly up while significantly
-- fewer of the arm's low-activity users (<= low_activity_max_pre_days active days in the CUPED
-- pre-period) were active at all (CI of the difference in their active share below 0): the
-- "ban the low-activity users" pattern, which raises LT by losing users.
with lifts as (
    select * from {{ ref('int_experiment_lifts') }}
    where week = 0 and metric in ('dau', 'lt7', 'next_day_retention')
),

per_arm as (
    select
        experiment,
        arm,
        any_value(control_arm) as control_arm,
        max(diff) filter (where metric = 'dau') as dau_diff,
        max(ci_low) filter (where metric = 'dau') as dau_ci_low,
        max(ci_high) filter (where metric = 'dau') as dau_ci_high,
        max(diff) filter (where metric = 'lt7') as lt7_diff,
        max(ci_low) filter (where metric = 'lt7') as lt7_ci_low,
        max(ci_high) filter (where metric = 'lt7') as lt7_ci_high,
        max(ci_low) filter (where metric = 'next_day_retention') as next_day_retention_ci_low
    from lifts
    group by all
),

low_activity as (
    select
        experiment,
        arm,
        count(*) as low_activity_users,
        avg(cast(active_days > 0 as double)) as low_activity_active_share,
        var_samp(cast(active_days > 0 as double)) as var_active
    from {{ ref('int_experiment_users') }}
    where week = 0 and pre_active_days <= {{ low_max }}
    group by all
),

low_compared as (
    select
        p.experiment,
        p.arm,
        c.low_activity_users as low_activity_users_control,
        a.low_activity_users as low_activity_users_arm,
        c.low_activity_active_share as low_activity_active_share_control,
        a.low_activity_active_share as low_activity_active_share_arm,
        a.low_activity_active_share - c.low_activity_active_share as low_activity_active_diff,
        sqrt(a.var_active / a.low_activity_users + c.var_active / c.low_activity_users) as low_activity_se
    from per_arm as p
    inner join low_activity as a on a.experiment = p.experiment and a.arm = p.arm
    inner join low_activity as c on c.experiment = p.experiment and c.arm = p.control_arm
)

select
    p.experiment,
    p.arm,
    p.control_arm,
    p.dau_diff,
    p.dau_ci_low,
    p.dau_ci_high,
    p.lt7_diff,
    p.lt7_ci_low,
    p.lt7_ci_high,
    p.next_day_retention_ci_low,
    l.low_activity_users_control,
    l.low_activity_users_arm,
    l.low_activity_active_share_control,
    l.low_activity_active_share_arm,
    l.low_activity_active_diff,
    l.low_activity_active_diff - {{ z975() }} * l.low_activity_se as low_activity_active_ci_low,
    l.low_activity_active_diff + {{ z975() }} * l.low_activity_se as low_activity_active_ci_high,
    coalesce(p.dau_ci_low > 0 and p.lt7_diff < 0, false) as dau_up_lt7_down,
    coalesce(l.low_activity_active_diff + {{ z975() }} * l.low_activity_se < 0, false) as fewer_low_activity_active,
    coalesce(
        (p.lt7_ci_low > 0 or p.next_day_retention_ci_low > 0)
        and l.low_activity_active_diff + {{ z975() }} * l.low_activity_se < 0,
        false
    ) as lt_up_from_fewer_low_activity
from per_arm as p
left join low_compared as l using (experiment, arm)
