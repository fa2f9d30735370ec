{#- The incremental window of a run. With var ds (and optionally ds_from), a model rebuilds the
    days [ds_from - lookback_days, ds + lookahead_days] (ds_from defaults to ds); without ds, every
    day. Both are checked to be dates. -#}

{% macro date_var(name) -%}
  {%- set value = var(name, none) -%}
  {%- if value is none or value == '' or value == 'None' -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', value | string) -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ " must be YYYY-MM-DD, got " ~ value) }}
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
