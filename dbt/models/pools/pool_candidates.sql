{{ config(
    post_hook="{{ keep_last_days(this, 'as_of', 14) }}",
    **incremental_by(['as_of', 'pool'])
) }}
{%- set times = refresh_times() %}

-- Every configured pool of the run (var pools; those named in run value pools) at every refresh
-- time of the run (run value as_of),
-- scored per target segment: each candidate (published within the window before the refresh)
-- with its counts, the smoothed rate, the filters it passes, its rank, and whether it is a
-- member. The publish step (tasks/pools/refresh.py) validates the members with GX and versions them.
-- Incremental by (as_of, pool), so runs of the daily and hourly DAGs never erase each other's
-- candidates before they are published; the last 14 days are kept to answer "why not item X?".
with refreshes as (
    select cast(as_of as timestamp) as as_of
    from (values {% for t in times %}('{{ t }}'){{ ", " if not loop.last }}{% endfor %}) as r (as_of)
),

pool_specs as (
    select *
    from (values
        {%- for row in pool_spec_rows() %}
        {{ row }}{{ "," if not loop.last }}
        {%- endfor %}
    ) as p (pool, segment, window_hours, action, per, min_impressions, prior_weight, min_rate, exclude_expired, max_size)
),

candidates as (
    select r.as_of, p.*, i.item_id, i.author_id, i.publish_ts, i.expire_ts
    from refreshes as r
    cross join pool_specs as p
    inner join {{ ref('stg_items') }} as i
        on i.publish_ts >= {{ dbt.dateadd('hour', '-p.window_hours', 'r.as_of') }} and i.publish_ts < r.as_of
),

counts as (
    select
        c.as_of,
        c.pool,
        c.segment,
        c.item_id,
        coalesce(sum(s.impressions), 0) as impressions,
        coalesce(sum(case c.action
            when 'click' then s.clicks when 'like' then s.likes when 'favorite' then s.favorites
            when 'share' then s.shares when 'comment' then s.comments when 'follow' then s.follows
        end), 0) as actions,
        coalesce(sum(case c.per when 'impression' then s.impressions when 'click' then s.clicks end), 0) as per_count
    from candidates as c
    left join {{ ref('int_item_hour_segment_stats') }} as s
        on s.item_id = c.item_id and s.segment = c.segment and s.hour < c.as_of
    group by c.as_of, c.pool, c.segment, c.item_id
),

scored as (
    select
        c.*,
        n.impressions,
        n.actions,
        n.per_count,
        -- Empirical-Bayes prior: the rate over all of this pool's candidates for the segment.
        coalesce(sum(n.actions) over w / nullif(sum(n.per_count) over w, 0), 0) as prior_rate
    from candidates as c
    inner join counts as n using (as_of, pool, segment, item_id)
    window w as (partition by c.as_of, c.pool, c.segment)
),

filtered as (
    select
        *,
        (actions + prior_weight * prior_rate) / nullif(per_count + prior_weight, 0) as score,
        exclude_expired and expire_ts is not null and expire_ts <= as_of as expired,
        impressions >= min_impressions as passes_floor
    from scored
),

ranked as (
    select
        *,
        not expired and passes_floor and passes_min_rate as eligible,
        -- Ineligible candidates rank after every eligible one (their rank is not shown).
        row_number() over (
            partition by as_of, pool, segment
            order by (not expired and passes_floor and passes_min_rate) desc, score desc, impressions desc, item_id
        ) as position
    from (select *, coalesce(score >= min_rate, false) as passes_min_rate from filtered)
)

select
    as_of,
    pool,
    segment,
    item_id,
    author_id,
    publish_ts,
    expire_ts,
    impressions,
    actions,
    per_count,
    prior_rate,
    score,
    expired,
    passes_floor,
    passes_min_rate,
    eligible,
    case when eligible then position end as rank,
    eligible and position <= max_size as is_member
from ranked
