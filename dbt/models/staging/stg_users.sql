with source as (
    select * from {{ source('raw', 'users') }}
)

select
    user_id,
    signup_ts,
    cast(signup_ts as date) as signup_day,
    gender,
    age_bucket,
    city_tier,
    country
from source
