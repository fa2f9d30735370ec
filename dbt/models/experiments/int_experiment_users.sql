{{ config(materialized='table') }}
-- One row per (experiment, window, assigned user signed up by the window's last day): the unit of
-- the readout. Its activity over the window (inactive users count 0), its retention sums over the
-- window's active days whose window has landed, and its activity over the CUPED pre-period.
with windows as (
    select * from {{ ref('int_experiment_windows') }}
),

assignments as (
    select experiment, user_id, arm
    from {{ experiment_source('experiment_assignments',
                              [('experiment', 'string'), ('user_id', 'bigint'), ('arm', 'string')]) }}
),

units as (
    select w.experiment, w.week, w.window_start, w.window_end, w.pre_start, w.pre_end, a.user_id, a.arm
    from windows as w
    inner join assignments as a using (experiment)
    inner join {{ ref('stg_users') }} as u on u.user_id = a.user_id and u.signup_day <= w.window_end
),

activity as (
    select
        u.experiment,
        u.week,
        u.user_id,
        count(*) as active_days,
        sum(a.sessions) as sessions,
        sum(a.session_duration_s) as session_duration_s,
        sum(a.clicks) as clicks,
        sum(a.follows) as follows,
        count(*) filter (where a.publishes > 0) as publisher_days
    from units as u
    inner join {{ ref('int_user_day_activity') }} as a
        on a.user_id = u.user_id and a.day between u.window_start and u.window_end
    group by all
),

retention as (
    select
        u.experiment,
        u.week,
        u.user_id,
        count(*) filter (where r.next_day_complete) as next_day_days,
        coalesce(sum(r.active_next_day) filter (where r.next_day_complete), 0) as next_day_active,
        count(*) filter (where r.lt7_complete) as lt7_days,
        coalesce(sum(r.lt7) filter (where r.lt7_complete), 0) as lt7_sum
    from units as u
    inner join {{ ref('int_user_day_retention') }} as r
        on r.user_id = u.user_id and r.day between u.window_start and u.window_end
    group by all
),

pre_period as (
    select
        u.experiment,
        u.user_id,
        count(*) as pre_active_days,
        sum(a.session_duration_s) as pre_session_duration_s,
        sum(a.clicks) as pre_clicks,
        sum(a.follows) as pre_follows
    from units as u
    inner join {{ ref('int_user_day_activity') }} as a
        on a.user_id = u.user_id and a.day between u.pre_start and u.pre_end
    where u.week = 0
    group by all
)

select
    u.experiment,
    u.week,
    u.arm,
    u.user_id,
    {{ dbt.datediff('u.window_start', 'u.window_end', 'day') }} + 1 as window_days,
    coalesce(a.active_days, 0) as active_days,
    coalesce(a.sessions, 0) as sessions,
    coalesce(a.session_duration_s, 0) as session_duration_s,
    coalesce(a.clicks, 0) as clicks,
    coalesce(a.follows, 0) as follows,
    coalesce(a.publisher_days, 0) as publisher_days,
    coalesce(r.next_day_days, 0) as next_day_days,
    coalesce(r.next_day_active, 0) as next_day_active,
    coalesce(r.lt7_days, 0) as lt7_days,
    coalesce(r.lt7_sum, 0) as lt7_sum,
    coalesce(p.pre_active_days, 0) as pre_active_days,
    coalesce(p.pre_session_duration_s, 0) as pre_session_duration_s,
    coalesce(p.pre_clicks, 0) as pre_clicks,
    coalesce(p.pre_follows, 0) as pre_follows
from units as u
left join activity as a using (experiment, week, user_id)
left join retention as r using (experiment, week, user_id)
left join pre_period as p using (experiment, user_id)
