{#- The window of a run: which days (ds, ds_from) and, for the pools, which refresh times (as_of) and
    pools. It comes in the environment variable RECPIPE_DBT_RUN (JSON, tasks/core/dbt_runner.py
    run_window), not in --vars, and is read only when a node executes: the vars then stay the same
    from run to run of a config, so dbt's saved parse state stays valid (any change of --vars makes
    dbt parse the whole project again, ~4 s per invocation). While parsing, every value is none.
    With ds (and optionally ds_from), a model rebuilds the days [ds_from - lookback_days,
    ds + lookahead_days] (ds_from defaults to ds); without ds, every day. Both are checked to be
    dates. -#}

{% macro run_var(name) -%}
  {%- if not execute -%}
    {{ return(none) }}
  {%- endif -%}
  {{ return(fromjson(env_var('RECPIPE_DBT_RUN', '{}')).get(name)) }}
{%- endmacro %}

{% macro date_var(name) -%}
  {%- set value = run_var(name) -%}
  {%- if value is none or value == '' or value == 'None' -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', value | string) -%}
    {{ exceptions.raise_compiler_error("run value " ~ name ~ " must be YYYY-MM-DD, got " ~ value) }}
  {%- endif -%}
  {{ return(value | string) }}
{%- endmacro %}

{% macro day_window(column, lookback_days=0, lookahead_days=0) -%}
  {%- set ds = date_var('ds') -%}
  {%- set ds_from = date_var('ds_from') or ds -%}
  {%- if ds is none -%}
    true
  {%- else -%}
    {{ column }} between date '{{ ds_from }}' - {{ lookback_days | int }} and date '{{ ds }}' + {{ lookahead_days | int }}
  {%- endif -%}
{%- endmacro %}
