{#- Where DuckDB and Spark SQL differ, the models call these macros (adapter.dispatch: `default__` is
    DuckDB's SQL, `spark__` Spark's); everything else is SQL both run as written, or dbt's own
    cross-database macros (dbt.datediff, dbt.dateadd, dbt.array_construct). docs/SCALE.md lists them. -#}

{#- The config of a model rebuilt per key (a day; (as_of, pool)): DuckDB deletes the rows whose key
    the run produces and inserts the new ones (strategy replace_keys, below); Spark (Parquet tables)
    partitions by the key and overwrites the partitions the run produces (dynamic partition
    overwrite). Both keep every other key's rows: the same table after any sequence of runs. -#}
{% macro incremental_by(keys) -%}
  {{ return(adapter.dispatch('incremental_by', 'recpipe')(keys)) }}
{%- endmacro %}

{% macro default__incremental_by(keys) -%}
  {{ return({'materialized': 'incremental', 'incremental_strategy': 'replace_keys', 'unique_key': keys}) }}
{%- endmacro %}

{#- Incremental strategy replace_keys (dbt calls get_incremental_<strategy>_sql): delete+insert by
    `unique_key` (a column or a list), as one semi-join. dbt-duckdb's delete+insert deletes a list
    key `using` the new rows joined on every column, which pairs each new row with each old row of
    its key: quadratic in a key's rows when a run re-renders a built key (a retry, a backfill).
    Here the target's rows whose key is among the new rows' distinct keys are deleted, then the new
    rows inserted: the same rows (null key values match nothing either way). -#}
{% macro get_incremental_replace_keys_sql(arg_dict) -%}
  {%- set keys = arg_dict['unique_key'] -%}
  {%- set keys = [keys] if keys is string else keys -%}
  {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
  delete from {{ arg_dict['target_relation'] }}
  where ({{ keys | join(', ') }}) in (select distinct {{ keys | join(', ') }} from {{ arg_dict['temp_relation'] }});
  insert into {{ arg_dict['target_relation'] }} ({{ columns }}) (select {{ columns }} from {{ arg_dict['temp_relation'] }})
{%- endmacro %}

{% macro spark__incremental_by(keys) -%}
  {{ return({'materialized': 'incremental', 'incremental_strategy': 'insert_overwrite', 'partition_by': keys,
             'file_format': 'parquet'}) }}
{%- endmacro %}

{#- A CTE's materialization hint (`materialized`, `not materialized`): DuckDB's planner takes it;
    Spark has no such hint (it plans each reference). -#}
{% macro cte_hint(hint) -%}
  {{ return(adapter.dispatch('cte_hint', 'recpipe')(hint)) }}
{%- endmacro %}

{% macro default__cte_hint(hint) -%}
  {{ hint }}
{%- endmacro %}

{% macro spark__cte_hint(hint) -%}
{%- endmacro %}

{#- A date as its day number (days since 1970-01-01, an integer): the order key of RANGE frames in
    days. DuckDB subtracts dates to an integer; Spark's date - date is an interval. -#}
{% macro day_number(column) -%}
  {{ return(adapter.dispatch('day_number', 'recpipe')(column)) }}
{%- endmacro %}

{% macro default__day_number(column) -%}
  {{ column }} - date '1970-01-01'
{%- endmacro %}

{% macro spark__day_number(column) -%}
  datediff({{ column }}, date '1970-01-01')
{%- endmacro %}

{#- One row per element of a list (a select-list expression): DuckDB unnest, Spark explode. -#}
{% macro unnest_list(list) -%}
  {{ return(adapter.dispatch('unnest_list', 'recpipe')(list)) }}
{%- endmacro %}

{% macro default__unnest_list(list) -%}
  unnest({{ list }})
{%- endmacro %}

{% macro spark__unnest_list(list) -%}
  explode({{ list }})
{%- endmacro %}

{#- The days first_day .. last_day (dates, inclusive), as a list for unnest_list. DuckDB's
    generate_series gives timestamps: cast the unnested value to date. -#}
{% macro day_list(first_day, last_day) -%}
  {{ return(adapter.dispatch('day_list', 'recpipe')(first_day, last_day)) }}
{%- endmacro %}

{% macro default__day_list(first_day, last_day) -%}
  generate_series({{ first_day }}, {{ last_day }}, interval 1 day)
{%- endmacro %}

{% macro spark__day_list(first_day, last_day) -%}
  sequence({{ first_day }}, {{ last_day }}, interval 1 day)
{%- endmacro %}

{#- The integers 0 .. n - 1 as a list (n >= 1). -#}
{% macro int_list(n) -%}
  {{ return(adapter.dispatch('int_list', 'recpipe')(n)) }}
{%- endmacro %}

{% macro default__int_list(n) -%}
  range(0, {{ n }})
{%- endmacro %}

{% macro spark__int_list(n) -%}
  sequence(0, ({{ n }}) - 1)
{%- endmacro %}

{#- The comma-separated values of a string as a list. -#}
{% macro comma_list(column) -%}
  {{ return(adapter.dispatch('comma_list', 'recpipe')(column)) }}
{%- endmacro %}

{% macro default__comma_list(column) -%}
  string_split({{ column }}, ',')
{%- endmacro %}

{% macro spark__comma_list(column) -%}
  split({{ column }}, ',')
{%- endmacro %}

{#- Whether a list holds a value. -#}
{% macro list_has(list, value) -%}
  {{ return(adapter.dispatch('list_has', 'recpipe')(list, value)) }}
{%- endmacro %}

{% macro default__list_has(list, value) -%}
  list_contains({{ list }}, {{ value }})
{%- endmacro %}

{% macro spark__list_has(list, value) -%}
  array_contains({{ list }}, {{ value }})
{%- endmacro %}

{#- Integer division, rounding down (non-negative operands). -#}
{% macro int_div(a, b) -%}
  {{ return(adapter.dispatch('int_div', 'recpipe')(a, b)) }}
{%- endmacro %}

{% macro default__int_div(a, b) -%}
  ({{ a }}) // ({{ b }})
{%- endmacro %}

{% macro spark__int_div(a, b) -%}
  ({{ a }}) div ({{ b }})
{%- endmacro %}

{#- Every column of `relation_alias` but `columns`. -#}
{% macro star_except(relation_alias, columns) -%}
  {{ return(adapter.dispatch('star_except', 'recpipe')(relation_alias, columns)) }}
{%- endmacro %}

{% macro default__star_except(relation_alias, columns) -%}
  {{ relation_alias }}.* exclude ({{ columns | join(', ') }})
{%- endmacro %}

{% macro spark__star_except(relation_alias, columns) -%}
  {{ relation_alias }}.* except ({{ columns | join(', ') }})
{%- endmacro %}

{#- A post-hook keeping the last `days` days of `relation` (by its timestamp `column`). DuckDB
    deletes the older rows. Spark's Parquet tables cannot delete rows: their partitions (the
    model's incremental key, led by `column`) older than that are dropped. -#}
{% macro keep_last_days(relation, column, days) -%}
  {{ return(adapter.dispatch('keep_last_days', 'recpipe')(relation, column, days)) }}
{%- endmacro %}

{% macro default__keep_last_days(relation, column, days) -%}
  delete from {{ relation }} where {{ column }} < (select max({{ column }}) from {{ relation }}) - interval {{ days | int }} day
{%- endmacro %}

{% macro spark__keep_last_days(relation, column, days) -%}
  {%- if not execute -%}
    {{ return('') }}
  {%- endif -%}
  {%- set keys = config.get('partition_by') -%}
  {%- set keys = [keys] if keys is string else keys -%}
  {%- set old = run_query(
      "select distinct " ~ keys | join(", ") ~ " from " ~ relation ~ " where " ~ column ~ " < (select max("
      ~ column ~ ") from " ~ relation ~ ") - interval " ~ (days | int) ~ " day") -%}
  {%- if old | length == 0 -%}
    refresh table {{ relation }}
  {%- else -%}
    alter table {{ relation }} drop if exists
    {%- for row in old %}
      partition ({% for key in keys %}{{ key }} = {{ spark_literal(row[key]) }}{{ ", " if not loop.last }}{% endfor %})
      {{- "," if not loop.last }}
    {%- endfor %}
  {%- endif -%}
{%- endmacro %}

{#- A value from a query result as a Spark SQL literal (timestamp, date, number or string). -#}
{% macro spark_literal(value) -%}
  {%- if value is none -%}
    null
  {%- elif value.hour is defined -%}
    timestamp '{{ value.strftime("%Y-%m-%d %H:%M:%S.%f") }}'
  {%- elif value.year is defined -%}
    date '{{ value.isoformat() }}'
  {%- elif value is number -%}
    {{ value }}
  {%- else -%}
    {{ sql_string(value) }}
  {%- endif -%}
{%- endmacro %}
