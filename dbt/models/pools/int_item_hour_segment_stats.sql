{{ config(**incremental_by('day')) }}

-- Per item, hour and slice ('all' = everyone, then each configured segment the acting user is
-- in that day): the counts pool scores are made of. The first build reads every day; later runs
-- rebuild days ds_from..ds (a refresh rebuilds the days it reads, so late events count).
with events as (
    select item_id, day, date_trunc('hour', ts) as hour, user_id, event_type
    from {{ ref('stg_events') }}
    where item_id is not null
      and event_type in ('impression', 'click', 'like', 'favorite', 'share', 'comment', 'follow')
      {%- if is_incremental() %}
      and {{ day_window('day') }}
      {%- endif %}
),

sliced as (
    select item_id, day, hour, 'all' as segment, event_type from events

    union all

    select e.item_id, e.day, e.hour, m.segment, e.event_type
    from events as e
    inner join {{ ref('int_user_day_segments') }} as m using (user_id, day)
)

select
    day,
    hour,
    segment,
    item_id,
    {{- event_counts(['impression', 'click', 'like', 'favorite', 'share', 'comment', 'follow']) }}
from sliced
group by day, hour, segment, item_id
