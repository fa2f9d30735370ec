{#- The sources on Spark, (re)created before every run (on-run-start) from var spark_sources, which
    tasks/core/dbt_runner.py passes on the spark target: {lake: the lake folder, tables: {table:
    [[column, Spark type], ...]} (the contract's columns), exports: {table: folder} (the Parquet
    copies of the DuckDB tables of source `experiments`; one not listed does not exist yet)}.

    Source `raw`, like the DuckDB warehouse's raw views (tasks/core/lake.py scan_sql): per table
    two external Parquet tables over its lake folder, `<table>__days` partitioned by its day folders
    (dt=YYYY-MM-DD) and `<table>__months` by its compacted month folders (month=YYYY-MM; each row
    with its dt and _batch), each ignoring the other's folders, and the view `<table>`: the day rows,
    plus the month rows that no day file of the same day and batch shadows. Dropping an external
    table leaves its files. On DuckDB this renders nothing. -#}
{% macro spark_sources() -%}
  {{ return(adapter.dispatch('spark_sources', 'recpipe')()) }}
{%- endmacro %}

{% macro default__spark_sources() -%}
{%- endmacro %}

{% macro spark__spark_sources() -%}
  {%- if execute -%}
    {%- set spec = var('spark_sources') -%}
    {%- if not spec -%}
      {{ exceptions.raise_compiler_error("the spark target needs var spark_sources (tasks/core/dbt_runner.py dbt_vars)") }}
    {%- endif -%}
    {%- for source in graph.sources.values() if source.source_name == 'raw' -%}
      {%- set schema = adapter.quote(source.schema) -%}
      {%- set table = source.identifier -%}
      {%- set location = sql_string(spec['lake'] ~ '/' ~ table) -%}
      {%- set quoted = [] -%}
      {%- set ddl = [] -%}
      {%- for name, type in spec['tables'][table] -%}
        {%- do quoted.append(adapter.quote(name)) -%}
        {%- do ddl.append(adapter.quote(name) ~ ' ' ~ type) -%}
      {%- endfor -%}
      {%- set days = schema ~ '.' ~ adapter.quote(table ~ '__days') -%}
      {%- set months = schema ~ '.' ~ adapter.quote(table ~ '__months') -%}
      {%- do run_query('create database if not exists ' ~ schema) -%}
      {%- do run_query('drop table if exists ' ~ days) -%}
      {%- do run_query('create table ' ~ days ~ ' (' ~ ddl | join(', ') ~ ', dt date) using parquet partitioned by (dt) location ' ~ location) -%}
      {%- do run_query('alter table ' ~ days ~ ' recover partitions') -%}
      {%- do run_query('drop table if exists ' ~ months) -%}
      {%- do run_query('create table ' ~ months ~ ' (' ~ ddl | join(', ') ~ ', dt date, _batch string, month string) using parquet partitioned by (month) location ' ~ location) -%}
      {%- do run_query('alter table ' ~ months ~ ' recover partitions') -%}
      {%- do run_query(
        'create or replace view ' ~ schema ~ '.' ~ adapter.quote(table) ~ ' as '
        ~ 'select ' ~ quoted | join(', ') ~ ', dt from ' ~ days
        ~ ' union all select ' ~ quoted | join(', ') ~ ', dt from ' ~ months ~ ' as m'
        ~ ' where not exists (select 1 from ' ~ days ~ ' as d where d.dt = m.dt'
        ~ " and d._metadata.file_name = concat('batch-', m._batch, '.parquet'))"
      ) -%}
    {%- endfor -%}
    {#- dbt cached the schemas' relations before this hook: it learns of these changes here, so
        that macro experiment_source (load_relation) sees them. -#}
    {%- for source in graph.sources.values() if source.source_name == 'experiments' -%}
      {%- set relation = api.Relation.create(database=source.database, schema=source.schema,
                                             identifier=source.identifier, type='table') -%}
      {%- do run_query('create database if not exists ' ~ adapter.quote(source.schema)) -%}
      {%- do run_query('drop table if exists ' ~ relation) -%}
      {%- do adapter.cache_dropped(relation) -%}
      {%- if source.identifier in spec['exports'] -%}
        {%- do run_query('create table ' ~ relation ~ ' using parquet location ' ~ sql_string(spec['exports'][source.identifier])) -%}
        {%- do adapter.cache_added(relation) -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro %}
