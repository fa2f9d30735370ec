"""The Vega-Lite check of the charts a page embeds: the reports build their charts without altair's
schema checks (tasks/reports/fragments.py), so the tests that render a page check every chart."""

from __future__ import annotations

import jsonschema
from altair.vegalite.v6.schema.core import load_schema

from tasks.reports.fragments import embedded_specs


def assert_valid_charts(page: str) -> list[dict]:
    """Every Vega-Lite spec embedded in `page`, each checked against the Vega-Lite schema altair
    writes (an AssertionError naming the chart and its first wrong part otherwise); returns them."""
    specs = embedded_specs(page)
    validator = jsonschema.Draft7Validator(load_schema())
    for number, spec in enumerate(specs):
        error = jsonschema.exceptions.best_match(validator.iter_errors(spec))
        if error is not None:
            raise AssertionError(f"chart {number} of the page is not valid Vega-Lite: {error.message} "
                                 f"at {'/'.join(map(str, error.absolute_path))}")
    return specs
