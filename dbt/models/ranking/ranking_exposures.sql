{{ config(on_schema_change='fail', **incremental_by('day')) }}
{%- set ds = date_var('ds') -%}
{%- set ds_from = date_var('ds_from') or ds -%}
{#- At parse time (execute false) the vars may be unset: a placeholder keeps the SQL renderable. -#}
{%- set long_view_s = var('ranking', {}).get('long_view_seconds') if execute else 1 -%}
{%- if execute and ds is none -%}
  {{ exceptions.raise_compiler_error("ranking_exposures needs run value ds (the last day to build, YYYY-MM-DD; ds_from optional): it is built per day, never for the whole history") }}
{%- endif -%}
{%- if execute and (long_view_s is not number or long_view_s <= 0) -%}
  {{ exceptions.raise_compiler_error("var ranking.long_view_seconds must be a positive number, got " ~ long_view_s) }}
{%- endif %}

-- docs/METHODS.md "Ranking examples" ranking examples: per day in [ds_from, ds], one row per (user, item) shown that day
-- (its first impression: time and feed position) with the labels of what the user did with the
-- item that day at or after that impression: click, like, favorite, share, comment, follow (the
-- author, from the item), long_view (a click whose dwell is at least long_view_seconds).
-- A run replaces its days (delete+insert on day).
with impressions as (
    select
        day,
        user_id,
        item_id,
        min(ts) as shown_at,
        min_by(position, ts) as position
    from {{ ref('stg_events') }}
    where event_type = 'impression' and day between date '{{ ds_from }}' and date '{{ ds }}'
    group by all
),

actions as (
    select day, user_id, item_id, event_type, ts, dwell_ms
    from {{ ref('stg_events') }}
    where event_type in ('click', 'like', 'favorite', 'share', 'comment', 'follow')
        and day between date '{{ ds_from }}' and date '{{ ds }}'
),

labelled as (
    select
        i.day,
        i.user_id,
        i.item_id,
        i.shown_at,
        i.position,
        {%- for action in ['click', 'like', 'favorite', 'share', 'comment', 'follow'] %}
        cast(count(a.ts) filter (where a.event_type = '{{ action }}') > 0 as integer) as {{ adapter.quote(action) }},
        {%- endfor %}
        coalesce(max(a.dwell_ms) filter (where a.event_type = 'click'), 0) / 1e3 as dwell_s
    from impressions as i
    left join actions as a
        on a.day = i.day and a.user_id = i.user_id and a.item_id = i.item_id and a.ts >= i.shown_at
    group by all
)

select
    *,
    cast(dwell_s >= {{ long_view_s }} as integer) as long_view
from labelled
