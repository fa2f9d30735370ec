{#- Content pools (docs/METHODS.md "Pool refresh and publish") come from the platform config (var pools, validated by
    tasks/core/config.py) and are checked again here: names as identifiers, actions from a fixed set,
    numbers as numbers. Nothing from the config reaches SQL as raw text. -#}

{% macro pool_action(name) -%}
  {%- if name not in ['impression', 'click', 'like', 'favorite', 'share', 'comment', 'follow'] -%}
    {{ exceptions.raise_compiler_error("not a pool score action: " ~ name) }}
  {%- endif -%}
  '{{ name }}'
{%- endmacro %}

{#- The refresh times of a run (run value as_of, macro run_var: one 'YYYY-MM-DD HH:00:00' or a list of
    them, UTC, on the hour), as a list of strings. -#}
{% macro refresh_times() -%}
  {%- set value = run_var('as_of') -%}
  {%- if not execute -%}
    {{ return(['1970-01-01 00:00:00']) }}  {#- parsing (dbt parse, the manifest): no run values -#}
  {%- endif -%}
  {%- if value is none or value == '' or value == 'None' -%}
    {{ exceptions.raise_compiler_error("run value as_of (the refresh time, 'YYYY-MM-DD HH:00:00') is required") }}
  {%- endif -%}
  {%- set values = [value] if value is string else value -%}
  {%- for v in values if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:00:00', v | string) -%}
    {{ exceptions.raise_compiler_error("run value as_of must be 'YYYY-MM-DD HH:00:00' (on the hour), got " ~ v) }}
  {%- endfor -%}
  {{ return(values | map('string') | list) }}
{%- endmacro %}

{#- One row per (pool, target segment) of the run's pools (run value pools: their names; none: every
    pool of var pools): the pool's settings as SQL literals. A pool without target segments has one
    row for everyone (segment 'all'). -#}
{% macro pool_spec_rows() -%}
  {%- set rows = [] -%}
  {%- set names = run_var('pools') -%}
  {%- for p in var('pools') if names is none or p['name'] in names -%}
    {%- for segment in (p['segments'] or ['all']) -%}
      {%- do rows.append(
        "('" ~ sql_identifier(p['name']) ~ "', '" ~ sql_identifier(segment) ~ "', "
        ~ (p['window_hours'] | int) ~ ", " ~ pool_action(p['score']['action']) ~ ", "
        ~ pool_action(p['score']['per']) ~ ", " ~ (p['score']['min_impressions'] | int) ~ ", "
        ~ (p['score']['prior_weight'] | float) ~ ", " ~ (p['filters']['min_rate'] | float) ~ ", "
        ~ ('true' if p['filters']['exclude_expired'] else 'false') ~ ", " ~ (p['max_size'] | int) ~ ")"
      ) -%}
    {%- endfor -%}
  {%- endfor -%}
  {%- if not rows and execute -%}
    {{ exceptions.raise_compiler_error("no content pool to render: var pools is empty or names none of run value pools") }}
  {%- elif not rows -%}
    {%- do rows.append("('parse', 'all', 1, 'click', 'impression', 0, 0.0, 0.0, true, 1)") -%}
  {%- endif -%}
  {{ return(rows) }}
{%- endmacro %}
