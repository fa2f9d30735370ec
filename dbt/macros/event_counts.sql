{#- One count column per event type, named by its plural (impression -> impressions, publish -> publishes): the counts
    the user-day activity and the item-hour pool stats aggregate from the events. -#}
{% macro event_counts(event_types) -%}
  {%- for t in event_types %}
        count(*) filter (where event_type = '{{ t }}') as {{ t }}{{ 'es' if t.endswith('sh') else 's' }}{{ "," if not loop.last }}
  {%- endfor %}
{%- endmacro %}

{#- The days ds_from..ds of a run, one row each (column `day`), for models that build a trailing
    window per day. -#}
{% macro days_of_run(ds_from, ds) -%}
    select cast(day as date) as day
    from (select {{ unnest_list(day_list("date '" ~ ds_from ~ "'", "date '" ~ ds ~ "'")) }} as day) as days
{%- endmacro %}
