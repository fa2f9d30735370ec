"""Running a GX suite on a pandas frame, and turning its failures into a data-quality alert.

Suites are code (lists of GX Core expectations built per check, see expectations/pools.py); each
validation runs through a validation definition on a whole-dataframe batch in the process's one
ephemeral GX context (created once: each context makes a temporary docs folder), so a task needs
no GX project on disk.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from tasks.core.config import PlatformConfig
from tasks.ops.alerts import Alert, raise_alert

log = logging.getLogger(__name__)
_RUN_IDS = itertools.count()


@dataclass(frozen=True)
class ValidationOutcome:
    """The result of one suite on one frame: success and the failed expectations, readable."""

    suite: str
    success: bool
    evaluated: int
    failed: list[dict[str, Any]] = field(default_factory=list)


@lru_cache(maxsize=1)
def _context() -> Any:
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.data_sources.add_pandas("frames")
    return ctx


def _failure(result: Any) -> dict[str, Any]:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id"}}
    observed = result.result.get("observed_value")
    if observed is None and "unexpected_count" in result.result:
        observed = {
            "unexpected_count": result.result["unexpected_count"],
            "partial_unexpected_list": result.result.get("partial_unexpected_list", [])[:5],
        }
    return {"expectation": cfg.type, "kwargs": kwargs, "observed": observed}


def validate_frame(df: pd.DataFrame, suite_name: str, expectations: list[Any]) -> ValidationOutcome:
    """Validate `df` against the expectations (GX Core objects) as suite `suite_name`."""
    ctx = _context()
    name = f"{suite_name}-{next(_RUN_IDS)}"  # definitions live in the shared context only for this run
    source = ctx.data_sources.get("frames")
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    try:
        result = definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    finally:
        ctx.validation_definitions.delete(name)
        ctx.suites.delete(name)
        source.delete_asset(name)
    failed = [_failure(r) for r in result.results if not r.success]
    outcome = ValidationOutcome(suite_name, bool(result.success), len(result.results), failed)
    log.info("GX %s: %s (%d expectations, %d failed, %d rows)", suite_name,
             "passed" if outcome.success else "FAILED", outcome.evaluated, len(failed), len(df))
    return outcome


def alert_failure(cfg: PlatformConfig, outcome: ValidationOutcome, *, source: str, title: str,
                  details: dict[str, Any] | None = None, severity: str = "warning") -> Alert:
    """Raise the data-quality alert of a failed validation: what was checked, what failed."""
    return raise_alert(
        Alert(
            kind="data_quality",
            severity=severity,  # type: ignore[arg-type]
            title=title,
            source=source,
            details={
                **(details or {}),
                "suite": outcome.suite,
                "failed_expectations": [
                    f"{f['expectation']}({', '.join(f'{k}={v}' for k, v in f['kwargs'].items())}): observed {f['observed']}"
                    for f in outcome.failed
                ],
            },
        ),
        cfg,
    )


def require_valid(cfg: PlatformConfig, outcome: ValidationOutcome, error: type[Exception], *, source: str,
                  title: str, details: dict[str, Any] | None = None) -> None:
    """Pass a successful validation; else raise its data-quality alert and then `error`
    naming the failed expectations (the task fails, nothing downstream is announced)."""
    if outcome.success:
        return
    alert_failure(cfg, outcome, source=source, title=title, details=details)
    raise error(f"{title}: failed GX expectations {', '.join(f['expectation'] for f in outcome.failed)}")
