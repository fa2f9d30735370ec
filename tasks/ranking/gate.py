"""The distillation gate (docs/METHODS.md "Distillation set and gate"): the full ranker's predictions of a day, checked by GX
before pre-ranking distils them.

`check(cfg, day, version, scored, exposures, segments, previous)` derives the two frames of
expectations/distillation.py: rows (the scored exposures: key integrity against the day's
exposures, validity, coverage, drift against the previous accepted day) and slices (calibration
per head and segment with an interval for the slice's sample size, AUC per head in a band and
against the previous accepted day's beyond noise), writes them as
Parquet under `<data_root>/gx/frames/<day>/<version>/{rows,slices}.parquet` (the evidence), and
validates them through the file-based GX project `<data_root>/gx/gx/`: per frame a suite
(`distillation_rows`, `distillation_slices`), a batch definition `gate` on a Parquet asset of the
pandas-filesystem data source `distillation_frames`, and a validation definition, both run by the
checkpoint `distillation_gate`, whose UpdateDataDocsAction renders every run into the data docs site
`<data_root>/gx/gx/uncommitted/data_docs/local_site/`: index.html, and per run and suite a page
validations/<suite>/<day>__<version>/<run time>/<batch>.html (validation results as JSON under
gx/uncommitted/validations/, same layout). Re-running replaces the suites, batch and validation
definitions and the checkpoint (delete, then add: their content changes daily), never duplicates
them; the pages of earlier runs stay.

Every check is a row of the warehouse table `distillation_gate` (day, version, passed,
failed_expectations, data_docs, checked_at; a re-run of (day, version) replaces its row). A failed
check raises a data-quality alert listing the failed expectations and linking the data docs, then
returns its outcome: the caller decides what pre-ranking trains on (ranking.gate.on_failure).
One gate runs at a time (it writes the warehouse: the one-slot writer pool serialises it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from scipy.stats import chi2, norm, rankdata

from expectations.distillation import (
    AUC,
    CALIBRATION,
    CHOSEN,
    KEY,
    REFERENCE,
    drift_expectations,
    drift_partition,
    label,
    pred,
    rows_expectations,
    slice_name,
    slices_expectations,
)
from tasks.core.config import ALL, RANKING_HEADS, PlatformConfig
from tasks.core.eval_metrics import auc
from tasks.core.warehouse import replace_rows
from tasks.ops.alerts import Alert, raise_alert

log = logging.getLogger(__name__)

SOURCE = "distillation_gate"
CHECKPOINT = "distillation_gate"
DATASOURCE = "distillation_frames"
BATCH = "gate"
SUITES = ("rows", "slices")  # one frame, one suite, one validation result each per run


@dataclass(frozen=True)
class GateOutcome:
    """One check of one day's predictions by one ranker version."""

    day: dt.date
    version: str
    success: bool
    evaluated: int  # expectations evaluated, all suites
    failed: list[dict[str, Any]] = field(default_factory=list)  # suite, expectation, kwargs, observed
    data_docs: str = ""  # path of the data docs index (index.html)
    pages: dict[str, str] = field(default_factory=dict)  # suite -> file URL of this run's validation page
    alert: Alert | None = None

    @property
    def failed_expectations(self) -> list[str]:
        """The failures, one readable line each."""
        return [describe(f) for f in self.failed]

    @property
    def caught_by(self) -> list[str]:
        """Which checks failed (check_name), distinct, sorted."""
        return sorted({check_name(f) for f in self.failed})


def check_name(failure: dict[str, Any]) -> str:
    """A failure's check: suite:expectation, or suite:expectation(columns) when it names columns."""
    named = columns(failure["kwargs"])
    return f"{failure['suite']}:{failure['expectation']}" + (f"({','.join(named)})" if named else "")


def columns(kwargs: dict[str, Any]) -> list[str]:
    """The columns an expectation's kwargs name: column, column_A and column_B, or column_list."""
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return list(kwargs.get("column_list", []))


def describe(failure: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in failure["kwargs"].items())
    return f"{failure['suite']}: {failure['expectation']}({kwargs}): observed {failure['observed']}"


# ---- the derived frames (the evidence under gx/frames/) -------------------------------------


def _require_columns(scored: pd.DataFrame, exposures: pd.DataFrame, heads: tuple[str, ...]) -> None:
    missing = [c for c in (*KEY, *(c for h in heads for c in (pred(h), label(h)))) if c not in scored]
    missing += [f"exposures.{c}" for c in KEY if c not in exposures]
    if missing:
        raise ValueError(f"scored frame lacks columns {missing}")


def rows_frame(scored: pd.DataFrame, exposures: pd.DataFrame, heads: tuple[str, ...] = RANKING_HEADS) -> pd.DataFrame:
    """The scored rows as validated: ids, `exposed` (the row's (user_id, item_id) is a key of
    `exposures`, the day's exposures), `chosen` (a model chose that exposure: its key is one of
    `exposures`' rows with `chosen` true; false where `exposures` has no such column), then p_<head>,
    y_<head> per head (float32, as the ranker emits them). ValueError when a column is missing (a
    caller's bug, not a ranker's)."""
    _require_columns(scored, exposures, heads)
    out = scored[list(KEY)].reset_index(drop=True).copy()
    out["exposed"] = key_in(out, exposures)
    out[CHOSEN] = key_in(out, exposures[exposures[CHOSEN].astype(bool)]) if CHOSEN in exposures else False
    for h in heads:
        out[pred(h)] = scored[pred(h)].to_numpy(dtype=np.float32)
        out[label(h)] = scored[label(h)].to_numpy(dtype=np.float32)
    return out


def key_in(frame: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Whether each row's (user_id, item_id) is one of the rows of `keys`."""
    if not len(keys):
        return np.zeros(len(frame), dtype=bool)
    return pd.MultiIndex.from_frame(frame[list(KEY)]).isin(pd.MultiIndex.from_frame(keys[list(KEY)]))


def calibration_rows(frame: pd.DataFrame, min_positives: int, heads: tuple[str, ...] = RANKING_HEADS) -> np.ndarray:
    """The rows the calibration slices read: on a day when a model chose some exposures (the
    closed loop), the others (organic fill, exploration), as long as they hold `min_positives`
    positives of the first head; else every row. A ranker's predictions on the items it picked
    itself are biased upward by that selection (the winner's curse), whatever its health; on the
    exposures it did not pick they are judged as on an organic day, and a planted bug shows there
    as well."""
    chosen = _chosen(frame)
    if chosen.any() and np.nansum(frame.loc[~chosen, label(heads[0])].to_numpy(dtype=np.float64)) >= min_positives:
        return ~chosen
    return np.ones(len(frame), dtype=bool)


def regime_switch(rows: pd.DataFrame, previous: pd.DataFrame | None) -> bool:
    """Today a model chose exposures and the previous accepted day's were all organic (the first
    served day of a closed loop): comparisons with that day (drift, AUC floor) measure the switch,
    not the ranker, and so does calibration on the exposures it chose (up to 2-4x over the true
    rate on the first served day, back in the band the day after, once the ranker has trained on
    its own picks)."""
    return previous is not None and bool(_chosen(rows).any()) and not _chosen(previous).any()


def _chosen(frame: pd.DataFrame) -> np.ndarray:
    return frame[CHOSEN].to_numpy(dtype=bool) if CHOSEN in frame else np.zeros(len(frame), dtype=bool)


def poisson_interval(count: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact (Garwood) two-sided 1 - alpha confidence interval of a Poisson mean, per observed count."""
    count = np.asarray(count, dtype=np.float64)
    low = np.where(count > 0, chi2.ppf(alpha / 2, np.maximum(2 * count, 1)) / 2, 0.0)
    return low, chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2


def calibration_frame(scored: pd.DataFrame, segments: pd.DataFrame | None, alpha: float,
                      heads: tuple[str, ...] = RANKING_HEADS) -> pd.DataFrame:
    """One row per (head, segment), segment 'all' first: n rows, positives, mean prediction (NaN
    predictions left out), observed rate, ratio = mean prediction / observed rate (NaN without a
    positive) and its confidence interval [ratio_low, ratio_high]: the expected positives
    n x mean prediction over the exact Poisson interval of the positives (Bonferroni: level
    1 - alpha over all rows of the frame; the count of a calibrated slice varies less than a
    Poisson one, so the interval errs wide). ratio_high is inf without a positive. A user in
    several segments counts in each; users in none count in 'all' only."""
    parts = [(ALL, scored)]
    if segments is not None and len(segments):
        joined = scored.merge(segments[["user_id", "segment"]].drop_duplicates(), on="user_id")
        parts += [(str(s), g) for s, g in joined.groupby("segment", sort=True)]
    rows = []
    for head in heads:
        for segment, frame in parts:
            p = frame[pred(head)].to_numpy(dtype=np.float64)
            y = frame[label(head)].to_numpy(dtype=np.float64)
            positives = int(np.nansum(y))
            mean_p = float(np.nanmean(p)) if np.isfinite(p).any() else float("nan")
            rate = float(np.nanmean(y)) if len(y) else float("nan")
            rows.append({
                "slice": slice_name(head, segment), "head": head, "segment": segment, "n": len(frame),
                "positives": positives, "mean_prediction": mean_p, "observed_rate": rate,
                "ratio": mean_p / rate if positives else float("nan"),
            })
    out = pd.DataFrame(rows, columns=["slice", "head", "segment", "n", "positives", "mean_prediction",
                                      "observed_rate", "ratio"])
    low, high = poisson_interval(out["positives"].to_numpy(), alpha / max(len(out), 1))
    expected = (out["n"] * out["mean_prediction"]).to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio_low"], out["ratio_high"] = expected / high, expected / low
    return out


def auc_standard_error(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong's standard error of the ROC AUC (ties count one half); NaN with fewer than two of either class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    above = (ranks[:m] - rankdata(pos)) / n  # per positive: the share of negatives below it
    below = 1 - (ranks[m:] - rankdata(neg)) / m  # per negative: the share of positives above it
    return math.sqrt(above.var(ddof=1) / m + below.var(ddof=1) / n)


def ranking_frame(scored: pd.DataFrame, min_positives: int, heads: tuple[str, ...] = RANKING_HEADS) -> pd.DataFrame:
    """One row per head: rows with a prediction, their positives, the ROC AUC of p against y
    (NaN without both classes), its standard error (DeLong) and `judged` (at least min_positives
    positives and a negative)."""
    rows = []
    for head in heads:
        p = scored[pred(head)].to_numpy(dtype=np.float64)
        y = scored[label(head)].to_numpy(dtype=np.float64)
        keep = np.isfinite(p) & np.isfinite(y)
        positives = int(y[keep].sum())
        rows.append({
            "slice": slice_name(head), "head": head, "n": int(keep.sum()), "positives": positives,
            "auc": auc(y[keep], p[keep]) if keep.any() else float("nan"),
            "auc_se": auc_standard_error(y[keep], p[keep]),
            "judged": positives >= min_positives and positives < keep.sum(),
        })
    return pd.DataFrame(rows, columns=["slice", "head", "n", "positives", "auc", "auc_se", "judged"])


def auc_floors(ranking: pd.DataFrame, previous: pd.DataFrame | None, max_drop: float, alpha: float) -> pd.DataFrame:
    """The judged heads of ranking_frame with auc_previous (the previous accepted day's AUC, NaN
    without one judged) and auc_floor = auc_previous - max_drop - z x sqrt(auc_se² + auc_se_previous²),
    z the one-sided normal quantile of alpha split over the judged heads (Bonferroni): the two days
    are independent samples, so a drop below the floor is beyond day-to-day noise and max_drop."""
    judged = ranking[ranking["judged"]].drop(columns="judged")
    if previous is None:
        return judged.assign(auc_previous=np.nan, auc_floor=np.nan)
    before = previous[previous["judged"]].set_index("head")
    auc_previous = judged["head"].map(before["auc"])
    se = np.sqrt(judged["auc_se"] ** 2 + judged["head"].map(before["auc_se"]) ** 2)
    z = norm.isf(alpha / max(len(judged), 1))
    return judged.assign(auc_previous=auc_previous, auc_floor=auc_previous - max_drop - z * se)


def slices_frame(calibration: pd.DataFrame, aucs: pd.DataFrame) -> pd.DataFrame:
    """calibration_frame and auc_floors, one frame (what the slices suite checks)."""
    columns = ["check", "slice", "head", "segment", "n", "positives", "mean_prediction", "observed_rate", "ratio",
               "ratio_low", "ratio_high", "auc", "auc_se", "auc_previous", "auc_floor"]
    cal = calibration.assign(check=CALIBRATION).reindex(columns=columns)
    rank = aucs.assign(check=AUC, segment=ALL).reindex(columns=columns)
    return pd.concat([cal, rank], ignore_index=True)


def drift_partitions(previous: pd.DataFrame | None, heads: tuple[str, ...] = RANKING_HEADS) -> dict[str, dict]:
    """Per head, the partition object of the previous accepted day's predictions (none without a
    previous day, or for a head without usable values)."""
    if previous is None:
        return {}
    out = {}
    for head in heads:
        if pred(head) in previous:
            partition = drift_partition(previous[pred(head)].to_numpy(dtype=np.float64))
            if partition is not None:
                out[head] = partition
    return out


# ---- GX -------------------------------------------------------------------------------------


def gx_root(cfg: PlatformConfig) -> Path:
    """The GX project root (absolute): the context lives in <root>/gx/, the checked frames in <root>/frames/."""
    return (cfg.data_root / "gx").resolve()


def _slug(text: str) -> str:
    """A path component that is also a literal regex (GX matches batch paths by regex)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def _context(root: Path) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # this process only, not saved
    return ctx


def _reset(ctx: Any) -> None:
    """Delete the checkpoint, validation definitions and suites of the last run (delete, then add:
    their content changes every run)."""
    names = {f"distillation_{s}" for s in SUITES}
    if any(c.name == CHECKPOINT for c in ctx.checkpoints.all()):
        ctx.checkpoints.delete(CHECKPOINT)
    for vd in ctx.validation_definitions.all():
        if vd.name in names:
            ctx.validation_definitions.delete(vd.name)
    for suite in ctx.suites.all():
        if suite.name in names:
            ctx.suites.delete(suite.name)


def _batch(ctx: Any, frames_dir: Path, suite: str, rel_path: str) -> Any:
    """The batch definition `gate` of the asset `suite`, pointed at this run's file."""
    try:
        source = ctx.data_sources.get(DATASOURCE)
        if Path(source.base_directory) != frames_dir:  # the data root moved: point the source at it
            ctx.data_sources.delete(DATASOURCE)
            raise KeyError(DATASOURCE)
    except (KeyError, ValueError):
        source = ctx.data_sources.add_pandas_filesystem(DATASOURCE, base_directory=str(frames_dir))
    try:
        asset = source.get_asset(suite)
    except LookupError:
        asset = source.add_parquet_asset(suite)
    if any(b.name == BATCH for b in asset.batch_definitions):
        asset.delete_batch_definition(BATCH)
    return asset.add_batch_definition_path(BATCH, rel_path)


def _condition(kwargs: dict[str, Any]) -> tuple[str, Any] | None:
    """(column, value) of a serialized `column == value` row condition."""
    cond = kwargs.get("row_condition")
    if isinstance(cond, dict) and cond.get("operator") == "==" and isinstance(cond.get("column"), dict):
        return cond["column"]["name"], cond["parameter"]
    return None


def _readable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k == "batch_id":
            continue
        if k == "row_condition" and (cond := _condition(kwargs)):
            v = f"{cond[0]} == {cond[1]!r}"
        elif k == "partition_object" and isinstance(v, dict):
            v = f"<previous day, {len(v.get('weights', []))} bins>"
        out[k] = v
    return out


def _rounded(value: Any) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)


def _offending_slices(kwargs: dict[str, Any], slices: pd.DataFrame) -> dict[str, Any]:
    """The slices a failed slices expectation objects to, with their values (a pair: [A, B]; GX
    reports values and row numbers only)."""
    rows = slices
    if cond := _condition(kwargs):
        rows = rows[rows[cond[0]] == cond[1]]
    if "column_A" in kwargs:  # A >= B, rows missing either left out
        a, b = rows[kwargs["column_A"]], rows[kwargs["column_B"]]
        bad = a.notna() & b.notna() & ~(a >= b)
        return {s: [_rounded(x), _rounded(y)] for s, x, y in zip(rows.loc[bad, "slice"], a[bad], b[bad])}
    values = rows[kwargs["column"]]
    if "min_value" in kwargs or "max_value" in kwargs:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bad = values.notna() & (((values < low) if low is not None else False) | ((values > high) if high is not None else False))
    else:
        bad = values.isna()
    return {s: _rounded(v) for s, v in zip(rows.loc[bad, "slice"], values[bad])}


def _failure(suite: str, result: Any, frame: pd.DataFrame) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    res = result.result or {}
    observed = res.get("observed_value")
    info = result.exception_info or {}
    if info.get("raised_exception"):
        observed = f"error: {info.get('exception_message')}"
    elif suite == "slices" and columns(kwargs):
        observed = _offending_slices(kwargs, frame)
    elif observed is None and "unexpected_count" in res:
        observed = {"unexpected_count": res["unexpected_count"], "element_count": res.get("element_count")}
        if "column_list" not in kwargs:  # a column's values (a compound's are the keys below)
            observed["partial_unexpected_list"] = list(res.get("partial_unexpected_list", []))[:5]
        if suite == "rows":  # which exposures: the keys of the first offending rows
            at = [int(i) for i in res.get("partial_unexpected_index_list", [])[:5]]
            observed["partial_unexpected_keys"] = frame.loc[at, list(KEY)].to_dict("records")
    elif observed is None and config.type == "expect_column_kl_divergence_to_be_less_than":
        observed = "infinite"
    return {"suite": suite, "expectation": config.type, "kwargs": _readable_kwargs(kwargs), "observed": observed}


def _url_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlparse(url).path)


def check(cfg: PlatformConfig, day: dt.date | str, version: str, scored: pd.DataFrame, exposures: pd.DataFrame,
          segments: pd.DataFrame | None, previous: pd.DataFrame | None) -> GateOutcome:
    """Gate the full ranker `version`'s predictions of `day` (one row per scored exposure: user_id,
    item_id, p_<head> and y_<head> for every head of RANKING_HEADS) against the day's `exposures`
    (their keys user_id, item_id, one row each, and optionally `chosen`: a model chose it), the
    users' `segments` (user_id, segment) and the previous accepted day's scored frame (optionally
    with `chosen`; None: no drift or AUC-drop check). Calibration reads `calibration_rows`; on a
    `regime_switch` the comparisons with the previous day are left out, and so is the
    calibration band unless enough exposures were not chosen. Records the check, alerts on
    failure, returns the outcome."""
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    gate = cfg.ranking.gate
    rows = rows_frame(scored, exposures)
    rows[REFERENCE] = calibration_rows(rows, gate.auc_min_positives)
    switch = regime_switch(rows, previous)
    calibrated = not switch or not rows[REFERENCE].all()  # on a switch: only on the exposures no model chose
    if switch:
        log.warning("distillation gate %s: the first day served by a model after an organic accepted day: drift and "
                    "AUC floor not checked%s", day, "" if calibrated else
                    ", nor the calibration band (too few exposures were not chosen by a model)")
        previous = None
    before = ranking_frame(previous, gate.auc_min_positives) if previous is not None else None
    slices = slices_frame(calibration_frame(rows[rows[REFERENCE]], segments, gate.alpha),
                          auc_floors(ranking_frame(rows, gate.auc_min_positives), before, gate.max_auc_drop, gate.alpha))
    frames = {"rows": rows, "slices": slices}
    suites = {
        "rows": rows_expectations(RANKING_HEADS, len(exposures), gate.min_coverage)
        + drift_expectations(drift_partitions(previous), gate.max_kl_divergence),
        "slices": slices_expectations(RANKING_HEADS, gate.calibration_band if calibrated else None, gate.auc_band,
                                      previous is not None),
    }

    root = gx_root(cfg)
    frames_dir = root / "frames"
    run_dir = Path(day.isoformat()) / _slug(version)
    (frames_dir / run_dir).mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(frames_dir / run_dir / f"{name}.parquet", index=False)

    ctx = _context(root)
    _reset(ctx)
    batches = {name: _batch(ctx, frames_dir, name, (run_dir / f"{name}.parquet").as_posix()) for name in frames}
    definitions = []
    for name, expectations in suites.items():
        # built whole, then stored once (add_expectation on a stored suite rewrites it every time)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"distillation_{name}", expectations=expectations))
        definitions.append(ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"distillation_{name}", data=batches[name], suite=suite)
        ))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name=CHECKPOINT,
        validation_definitions=definitions,
        actions=[UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "SUMMARY"},
    ))
    run_id = RunIdentifier(run_name=f"{day.isoformat()}__{_slug(version)}", run_time=dt.datetime.now(dt.UTC))
    result = checkpoint.run(run_id=run_id)

    failed: list[dict[str, Any]] = []
    pages: dict[str, str] = {}
    evaluated = 0
    for identifier, validation in result.run_results.items():
        suite_name = identifier.expectation_suite_identifier.name.removeprefix("distillation_")
        evaluated += len(validation.results)
        failed += [_failure(suite_name, r, frames[suite_name]) for r in validation.results if not r.success]
        urls = ctx.get_docs_sites_urls(resource_identifier=identifier)
        if urls:
            pages[suite_name] = urls[0]["site_url"]
    index_url = ctx.get_docs_sites_urls()[0]["site_url"]
    data_docs = _url_path(index_url)
    success = bool(result.success)
    log.info("distillation gate %s %s: %s (%d expectations, %d failed), data docs %s", day, version,
             "passed" if success else "FAILED", evaluated, len(failed), data_docs)

    outcome = GateOutcome(day, version, success, evaluated, failed, data_docs, pages)
    if not success:  # the alert first: it must not depend on the warehouse's writer slot
        alert = raise_alert(
            Alert(
                kind="data_quality",
                severity="critical",
                title=f"distillation gate: full ranker {version} predictions of {day.isoformat()} rejected",
                source=SOURCE,
                details={
                    "day": day.isoformat(),
                    "version": version,
                    "exposures": len(exposures),
                    "scored": len(rows),
                    "failed_expectations": outcome.failed_expectations,
                    "data_docs": data_docs,
                    "on_failure": gate.on_failure,
                },
                links={"data docs": index_url,
                       **{f"{s} validation": pages[s] for s in sorted({f["suite"] for f in failed}) if s in pages}},
            ),
            cfg,
        )
        outcome = GateOutcome(day, version, success, evaluated, failed, data_docs, pages, alert)
    _record(cfg, outcome)
    return outcome


def _record(cfg: PlatformConfig, outcome: GateOutcome) -> None:
    """One row of `distillation_gate` per (day, version): a re-run replaces it."""
    frame = pd.DataFrame([{
        "day": outcome.day, "version": outcome.version, "passed": outcome.success,
        "failed_expectations": json.dumps(outcome.failed_expectations), "data_docs": outcome.data_docs,
    }])
    replace_rows(cfg, "distillation_gate", frame, ["day", "version"],
                 columns="day date, version varchar, passed boolean, failed_expectations varchar, data_docs varchar, "
                         "checked_at timestamp", stamp="checked_at")
