{{ config(on_schema_change='fail', **incremental_by('day')) }}
{%- set ds = date_var('ds') -%}
{%- set ds_from = date_var('ds_from') or ds -%}
{#- At parse time (execute false) the vars may be unset: a placeholder keeps the SQL renderable. -#}
{%- set window_days = var('kol', {}).get('window_days') if execute else 1 -%}
{%- if execute and ds is none -%}
  {{ exceptions.raise_compiler_error("kol_features needs run value ds (the last day to score, YYYY-MM-DD; ds_from optional): it is built per day, never for the whole history") }}
{%- endif -%}
{%- if execute and (window_days is not integer or window_days < 1) -%}
  {{ exceptions.raise_compiler_error("var kol.window_days must be a positive integer, got " ~ window_days) }}
{%- endif %}

-- docs/METHODS.md "KOL scoring" KOL features: per day d in [ds_from, ds] and user, over the trailing window
-- [d - window_days + 1, d]: the user's shares, and the offsite visits their shared links brought
-- (offsite_visit events whose referrer_user_id is the user). Users with neither are left out.
-- A run replaces its days (delete+insert on day); tasks/social/kol.py scores them.
with days as (
    {{ days_of_run(ds_from, ds) }}
),

daily as (
    select
        day,
        case event_type when 'share' then user_id else referrer_user_id end as user_id,
        count(*) filter (where event_type = 'share') as shares,
        count(*) filter (where event_type = 'offsite_visit') as visits
    from {{ ref('stg_events') }}
    where event_type in ('share', 'offsite_visit')
        and day between date '{{ ds_from }}' - {{ window_days - 1 }} and date '{{ ds }}'
    group by all
),

windowed as (
    select
        d.day,
        a.user_id,
        cast(sum(a.shares) as bigint) as shares,
        cast(sum(a.visits) as bigint) as visits
    from days as d
    inner join daily as a on a.day between d.day - {{ window_days - 1 }} and d.day
    group by d.day, a.user_id
)

select
    day,
    user_id,
    shares,
    visits,
    visits / nullif(shares, 0) as visits_per_share
from windowed
