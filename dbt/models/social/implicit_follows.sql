{{ config(on_schema_change='fail', **incremental_by('day')) }}
{%- set ds = date_var('ds') -%}
{%- set ds_from = date_var('ds_from') or ds -%}
{#- At parse time (execute false) the vars may be unset: placeholders keep the SQL renderable. -#}
{%- set s = var('implicit_follows', {}) if execute else {'window_days': 1, 'min_clicks': 1, 'top_n': 1} -%}
{%- set w = s.get('weights', {}) if execute else {'click': 0, 'dwell_minute': 0, 'like': 0} -%}
{%- if execute and ds is none -%}
  {{ exceptions.raise_compiler_error("implicit_follows needs run value ds (the last day to build, YYYY-MM-DD; ds_from optional): it is built per day, never for the whole history") }}
{%- endif -%}
{%- if execute -%}
  {%- for key in ['window_days', 'min_clicks', 'top_n'] if s.get(key) is not integer or s.get(key) < 1 -%}
    {{ exceptions.raise_compiler_error("var implicit_follows." ~ key ~ " must be a positive integer, got " ~ s.get(key)) }}
  {%- endfor -%}
  {%- for key in ['click', 'dwell_minute', 'like'] if w.get(key) is not number or w.get(key) is boolean or w.get(key) < 0 -%}
    {{ exceptions.raise_compiler_error("var implicit_follows.weights." ~ key ~ " must be a number >= 0, got " ~ w.get(key)) }}
  {%- endfor -%}
{%- endif %}

-- docs/METHODS.md "Implicit follows" U2A2I implicit follows: per day d in [ds_from, ds], the authors each user engages
-- with over the trailing window [d - window_days + 1, d] (clicks, their watch time, likes on the
-- author's items) without following them. Own items and authors the user follows at the end of d
-- (the latest follow/unfollow action per pair decides) are left out; pairs with at least
-- min_clicks clicks are ranked per user by affinity and the top_n kept. A run replaces its days.
with days as (
    {{ days_of_run(ds_from, ds) }}
),

daily as (
    select
        e.day,
        e.user_id,
        i.author_id,
        count(*) filter (where e.event_type = 'click') as clicks,
        coalesce(sum(e.dwell_ms) filter (where e.event_type = 'click'), 0) as dwell_ms,
        count(*) filter (where e.event_type = 'like') as likes
    from {{ ref('stg_events') }} as e
    inner join {{ ref('stg_items') }} as i using (item_id)
    where e.event_type in ('click', 'like')
        and e.day between date '{{ ds_from }}' - {{ s.window_days - 1 }} and date '{{ ds }}'
        and i.author_id <> e.user_id
    group by all
),

windowed as (
    select
        d.day,
        a.user_id,
        a.author_id,
        cast(sum(a.clicks) as bigint) as clicks,
        sum(a.dwell_ms) / 6e4 as dwell_minutes,
        cast(sum(a.likes) as bigint) as likes
    from days as d
    inner join daily as a on a.day between d.day - {{ s.window_days - 1 }} and d.day
    group by d.day, a.user_id, a.author_id
),

-- Ties at the same instant: the unfollow wins ('unfollow' sorts after 'follow').
follow_state as (
    select d.day, f.user_id, f.author_id, f.action
    from days as d
    inner join {{ ref('stg_follows') }} as f on f.day <= d.day
    qualify row_number() over (partition by d.day, f.user_id, f.author_id order by f.ts desc, f.action desc) = 1
),

candidates as (
    select
        w.*,
        {{ w.click | float }} * w.clicks
            + {{ w.dwell_minute | float }} * w.dwell_minutes
            + {{ w.like | float }} * w.likes as affinity
    from windowed as w
    anti join (select * from follow_state where action = 'follow') as f using (day, user_id, author_id)
    where w.clicks >= {{ s.min_clicks }}
),

ranked as (
    select
        *,
        row_number() over (partition by day, user_id order by affinity desc, clicks desc, author_id) as rank
    from candidates
    qualify rank <= {{ s.top_n }}
)

select day, user_id, author_id, clicks, dwell_minutes, likes, affinity, rank
from ranked
