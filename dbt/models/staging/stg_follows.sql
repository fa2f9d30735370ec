with source as (
    select * from {{ source('raw', 'follows') }}
)

select
    user_id,
    author_id,
    ts,
    cast(dt as date) as day,
    action
from source
