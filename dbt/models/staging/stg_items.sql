with source as (
    select * from {{ source('raw', 'items') }}
)

select
    item_id,
    author_id,
    category_l1,
    category_l2,
    content_cluster,
    publish_ts,
    cast(publish_ts as date) as publish_day,
    duration_ms,
    expire_ts
from source
