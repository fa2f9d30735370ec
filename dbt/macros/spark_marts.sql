{#- The models built on Spark, for the Python steps that read them from the DuckDB warehouse (pool
    publish, KOL scoring, training, reports, GX): after every run on the spark target (on-run-end),
    each table or incremental model the run built is written whole as plain Parquet (partition
    columns included, so no types are lost to folder names) into a new folder
    `<var spark_sources.marts>/<model>/<run started at>/`; Spark marks it complete with _SUCCESS.
    tasks/core/dbt_runner.py then points the warehouse's view of the model at the newest complete
    folder and removes the older ones. On DuckDB it does nothing: the models are the warehouse's. -#}
{% macro spark_marts(results) -%}
  {{ return(adapter.dispatch('spark_marts', 'recpipe')(results)) }}
{%- endmacro %}

{% macro default__spark_marts(results) -%}
{%- endmacro %}

{% macro spark__spark_marts(results) -%}
  {%- if execute -%}
    {%- set folder = var('spark_sources')['marts'] -%}
    {%- set version = run_started_at.strftime('%Y%m%dT%H%M%S%f') -%}
    {%- for result in results
          if result.node.resource_type == 'model' and result.status == 'success'
          and result.node.config.materialized in ('table', 'incremental') -%}
      {%- set location = sql_string(folder ~ '/' ~ result.node.name ~ '/' ~ version) -%}
      {%- do run_query('insert overwrite directory ' ~ location ~ ' using parquet select * from '
                       ~ result.node.relation_name) -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro %}
