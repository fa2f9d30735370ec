{#- The slices every metric mart reports: everyone ('all', 'all') and each experiment bucket
    ('all', bucket) by grouping sets over `source`, and each segment (segment, 'all') through the
    memberships CTE. `aggregates` is the select list of aggregate expressions. -#}
{% macro slice_rollup(source, memberships, aggregates) %}
    select
        day,
        'all' as segment,
        case when grouping(experiment_bucket) = 1 then 'all' else experiment_bucket end as experiment_bucket,
        {{- aggregates }}
    from {{ source }}
    group by grouping sets ((day), (day, experiment_bucket))

    union all

    select
        day,
        m.segment,
        'all' as experiment_bucket,
        {{- aggregates }}
    from {{ source }}
    inner join {{ memberships }} as m using (user_id, day)
    group by day, m.segment
{% endmacro %}
