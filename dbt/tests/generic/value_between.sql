{% test value_between(model, column_name, min_value, max_value) %}
-- Rows whose value lies outside [min_value, max_value] (nulls pass: a rate of no denominators).
select *
from {{ model }}
where {{ column_name }} < {{ min_value }} or {{ column_name }} > {{ max_value }}
{% endtest %}
