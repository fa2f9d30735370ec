{#- Helpers of the experiment readout (dbt/models/experiments, docs/METHODS.md "Experiment readout"). -#}

{#- source('experiments', table), or an empty relation with `columns` ([(name, type), ...]) while
    the table does not exist yet (before the first publish_assignments): the models then build
    empty instead of failing. -#}
{% macro experiment_source(table, columns) -%}
  {%- set relation = source('experiments', table) -%}
  {%- if execute and load_relation(relation) is none -%}
    (select {% for name, type in columns %}cast(null as {{ type }}) as {{ name }}{{ ", " if not loop.last }}{% endfor %} where false)
  {%- else -%}
    {{ relation }}
  {%- endif -%}
{%- endmacro %}

{#- The 97.5% quantile of the standard normal: 95% CI = estimate -/+ z975 * se. -#}
{% macro z975() -%}
    1.959963984540054
{%- endmacro %}

{#- erfc(x) for x >= 0. Below 3 (absolute error < 1e-14): 1 - erf(x), with erf(x) = exp(-x^2) *
    sum_n x^(2n+1) / Gamma(n + 3/2) (all terms positive: no cancellation), 200 terms in log space;
    from 3 on (relative error < 1e-12): the continued fraction exp(-x^2) / sqrt(pi) /
    (x + (1/2) / (x + (2/2) / (x + (3/2) / ...))), 80 levels. -#}
{% macro erfc(x) -%}
  {{ return(adapter.dispatch('erfc', 'recpipe')(x)) }}
{%- endmacro %}

{% macro default__erfc(x) -%}
    (case when ({{ x }}) < 3 then
        1 - exp(-least({{ x }}, 3.0) * least({{ x }}, 3.0)) * list_sum(list_transform(range(0, 200),
            lambda n: exp((2 * n + 1) * ln(least({{ x }}, 3.0)) - lgamma(n + 1.5))))
    else
        exp(-greatest({{ x }}, 3.0) * greatest({{ x }}, 3.0)) / sqrt(pi())
            / list_reduce(range(80, 0, -1), lambda acc, k: greatest({{ x }}, 3.0) + (k / 2) / acc, greatest({{ x }}, 3.0))
    end)
{%- endmacro %}

{#- Two-sided p-value of a z statistic under the standard normal: erfc(|z| / sqrt(2)). -#}
{% macro normal_p_value(z) -%}
    {{ erfc('abs(' ~ z ~ ') / sqrt(2)') }}
{%- endmacro %}

{#- P(chi2_df > x), the regularised upper incomplete gamma Q(df/2, x/2), for an integer df >= 1:
    from Q(1/2, z) = erfc(sqrt z) (odd df) or Q(1, z) = exp(-z) (even df), up by
    Q(a + 1, z) = Q(a, z) + z^a exp(-z) / Gamma(a + 1). -#}
{% macro chi2_sf(x, df) -%}
  {{ return(adapter.dispatch('chi2_sf', 'recpipe')(x, df)) }}
{%- endmacro %}

{% macro default__chi2_sf(x, df) -%}
    (case when ({{ df }}) % 2 = 1 then {{ erfc('sqrt((' ~ x ~ ') / 2)') }} else exp(-({{ x }}) / 2) end
     + coalesce(list_sum(list_transform(
         range(0, cast((({{ df }}) - 1) // 2 as bigint)),
         lambda j: exp((j + (case when ({{ df }}) % 2 = 1 then 0.5 else 1.0 end)) * ln(({{ x }}) / 2) - ({{ x }}) / 2
                       - lgamma(j + (case when ({{ df }}) % 2 = 1 then 0.5 else 1.0 end) + 1))
     )), 0))
{%- endmacro %}

{#- Spark has neither lgamma nor list_sum: the same series by their term ratios, summed with
    aggregate. erf's terms: t_0 = x / Gamma(3/2), t_n = t_(n-1) x^2 / (n + 1/2); the continued
    fraction as above. -#}
{% macro spark__erfc(x) -%}
    {%- set below = 'least(' ~ x ~ ', 3.0D)' -%}
    {%- set above = 'greatest(' ~ x ~ ', 3.0D)' -%}
    (case when ({{ x }}) < 3 then
        1 - exp(-{{ below }} * {{ below }}) * aggregate(sequence(1, 199),
            named_struct('term', {{ below }} / (sqrt(pi()) / 2), 'total', {{ below }} / (sqrt(pi()) / 2)),
            (erfc_acc, erfc_n) -> named_struct(
                'term', erfc_acc.term * {{ below }} * {{ below }} / (erfc_n + 0.5D),
                'total', erfc_acc.total + erfc_acc.term * {{ below }} * {{ below }} / (erfc_n + 0.5D)),
            erfc_acc -> erfc_acc.total)
    else
        exp(-{{ above }} * {{ above }}) / sqrt(pi())
            / aggregate(sequence(80, 1, -1), {{ above }}, (erfc_acc, erfc_k) -> {{ above }} + (erfc_k / 2) / erfc_acc)
    end)
{%- endmacro %}

{#- The terms z^(j+a) exp(-z) / Gamma(j + a + 1), z = x / 2, j = 0 .. (df - 1) div 2 - 1, by their
    ratio z / (j + a + 1) from t_0 = z^a exp(-z) / Gamma(a + 1) (Gamma(3/2) = sqrt(pi) / 2, Gamma(2) = 1). -#}
{% macro spark__chi2_sf(x, df) -%}
    {%- set odd = '(' ~ df ~ ') % 2 = 1' -%}
    {%- set a = '(case when ' ~ odd ~ ' then 0.5D else 1.0D end)' -%}
    {%- set terms = int_div(df ~ ' - 1', 2) -%}
    (case when {{ odd }} then {{ erfc('sqrt((' ~ x ~ ') / 2)') }} else exp(-({{ x }}) / 2) end
     + aggregate(filter(sequence(0, greatest({{ terms }}, 1) - 1), chi2_j -> chi2_j < {{ terms }}),
         named_struct('term', case when {{ odd }} then sqrt(({{ x }}) / 2) / (sqrt(pi()) / 2) else ({{ x }}) / 2 end
                              * exp(-({{ x }}) / 2), 'total', 0D),
         (chi2_acc, chi2_j) -> named_struct(
             'term', chi2_acc.term * (({{ x }}) / 2) / (chi2_j + 1 + {{ a }}),
             'total', chi2_acc.total + chi2_acc.term),
         chi2_acc -> chi2_acc.total))
{%- endmacro %}
