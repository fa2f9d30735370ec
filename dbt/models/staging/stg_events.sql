with source as (
    select * from {{ source('raw', 'events') }}
)

select
    event_id,
    ts,
    cast(dt as date) as day,  -- the lake partition (the loader puts each event on its ts's day)
    user_id,
    session_id,
    item_id,
    event_type,
    dwell_ms,
    experiment_bucket,
    referrer_user_id,
    position
from source
