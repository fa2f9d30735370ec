{#- Segments come from the platform config (var segments, validated by tasks/core/config.py). Values
    reach SQL only as checked identifiers, integers or escaped string literals. -#}

{% macro sql_identifier(name) -%}
  {%- if not modules.re.fullmatch('[a-z][a-z0-9_]*', name | string) -%}
    {{ exceptions.raise_compiler_error("not a valid segment name: " ~ name) }}
  {%- endif -%}
  {{- name -}}
{%- endmacro %}

{% macro sql_string(value) -%}
  '{{ (value | string).replace("'", "''") }}'
{%- endmacro %}

{% macro sql_in(column, values, kind='string') -%}
  {{ column }} in (
  {%- for v in values -%}
    {%- if kind == 'int' %}{{ v | int }}{% else %}{{ sql_string(v) }}{% endif %}{{ ", " if not loop.last }}
  {%- endfor -%}
  )
{%- endmacro %}

{#- The predicate of one segment over the inputs of int_user_day_segments (days_since_signup,
    prior_active_days_<window>, gender, age_bucket, city_tier). -#}
{% macro segment_predicate(segment) -%}
  {%- set kind = segment['kind'] -%}
  {%- if kind == 'new_users' -%}
    days_since_signup between 0 and {{ segment['max_days_since_signup'] | int }}
  {%- elif kind == 'low_activity' -%}
    prior_active_days_{{ segment['window_days'] | int }} <= {{ segment['max_active_days'] | int }}
  {%- elif kind == 'demographic' -%}
    true
    {%- if segment.get('gender') %} and {{ sql_in('gender', segment['gender']) }}{% endif -%}
    {%- if segment.get('age_bucket') %} and {{ sql_in('age_bucket', segment['age_bucket']) }}{% endif -%}
    {%- if segment.get('city_tier') %} and {{ sql_in('city_tier', segment['city_tier'], 'int') }}{% endif -%}
  {%- else -%}
    {{ exceptions.raise_compiler_error("unknown segment kind: " ~ kind) }}
  {%- endif -%}
{%- endmacro %}

{#- The distinct look-back windows of the low_activity segments (one column each). -#}
{% macro low_activity_windows() -%}
  {%- set windows = [] -%}
  {%- for s in var('segments') if s['kind'] == 'low_activity' and (s['window_days'] | int) not in windows -%}
    {%- do windows.append(s['window_days'] | int) -%}
  {%- endfor -%}
  {{ return(windows) }}
{%- endmacro %}
