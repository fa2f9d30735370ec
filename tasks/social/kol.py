"""KOL scoring (docs/METHODS.md "KOL scoring"): users whose shared links bring much traffic from off the platform.

dbt builds `kol_features` per day (shares and the offsite visits they brought over the trailing
`kol.window_days`). Here each day's features get an empirical-Bayes score: visits_u ~
Poisson(shares_u * λ_u), λ_u ~ Gamma(shape, rate) fitted by the method of moments across the day's
sharers; kol_score = E[λ_u | data] = (shape + visits_u) / (rate + shares_u), the smoothed visits
per share. One lucky share no longer beats a long record: 5 visits of 1 share is pulled towards
the population's rate, 2,000 of 100 shares hardly moves. percentile = the share of the day's
scored users with a score at or below the user's (in (0, 1]); is_kol = percentile >=
kol.kol_percentile and at least one visit brought. The day's scores pass a GX suite (expectations/social.py) before they replace
the day in `kol_scores` (one transaction); on failure a data-quality alert is raised, nothing is
written and KolScoresRejected is raised.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from tasks.core.config import PlatformConfig
from tasks.core.days import day_range
from tasks.core.dbt_runner import run_dbt
from tasks.core.warehouse import connect_writer, upsert
from tasks.ops.alerts import DataQualityRejected

log = logging.getLogger(__name__)
TABLE = "kol_scores"
_COLUMNS = """
    day date not null,
    user_id bigint not null,
    shares bigint not null,
    visits bigint not null,
    visits_per_share double,
    kol_score double not null,
    percentile double not null,
    is_kol boolean not null
"""
# Relative floor of the prior's standard deviation (share of its mean) when the users' rates vary
# no more than Poisson noise explains: a very strong prior, scores near the mean.
_MIN_PRIOR_CV = 1e-3


class KolScoresRejected(DataQualityRejected):
    """A day's KOL scores failed their GX suite; the day's previous scores stay."""


@dataclass(frozen=True)
class GammaPrior:
    """λ ~ Gamma(shape, rate): visits per share across users (mean shape / rate)."""

    shape: float
    rate: float


def fit_prior(shares: np.ndarray, visits: np.ndarray) -> GammaPrior:
    """Method of moments for Poisson counts with exposures n_i = shares (users with n_i > 0):
    mean μ = Σv / Σn; between-user variance σ² from E[Σ n_i (v_i/n_i - μ)²] = (N - 1) μ +
    σ² (Σn - Σn² / Σn), floored at (_MIN_PRIOR_CV μ)²; shape = μ² / σ², rate = μ / σ²."""
    n = np.asarray(shares, dtype=float)
    v = np.asarray(visits, dtype=float)
    keep = n > 0
    n, v = n[keep], v[keep]
    if n.size == 0 or v.sum() == 0:  # nobody shared, or no share brought a visit: all scores 0
        return GammaPrior(shape=0.0, rate=1.0)
    mu = v.sum() / n.sum()
    spread = n.sum() - (n**2).sum() / n.sum()
    sigma2 = ((n * (v / n - mu) ** 2).sum() - (n.size - 1) * mu) / spread if spread > 0 else 0.0
    sigma2 = max(sigma2, (_MIN_PRIOR_CV * mu) ** 2)
    return GammaPrior(shape=float(mu**2 / sigma2), rate=float(mu / sigma2))


def score(features: pd.DataFrame, kol_percentile: float) -> tuple[pd.DataFrame, GammaPrior]:
    """Score one day's features (day, user_id, shares, visits, visits_per_share): the frame with
    kol_score, percentile and is_kol added, and the fitted prior."""
    prior = fit_prior(features.shares.to_numpy(), features.visits.to_numpy())
    out = features.copy()
    out["kol_score"] = (prior.shape + out.visits) / (prior.rate + out.shares)
    out["percentile"] = out.kol_score.rank(method="max", pct=True)
    out["is_kol"] = (out.percentile >= kol_percentile) & (out.visits > 0)
    return out, prior


def build_features(cfg: PlatformConfig, ds_from: str, ds: str) -> None:
    """dbt: rebuild kol_features for the days [ds_from, ds] (with its dbt tests; the kol_scoring
    DAG runs the same selection as its `dbt` task group)."""
    run_dbt(cfg, ["build", "--selector", "kol"], ds=ds, ds_from=ds_from)


def score_day(cfg: PlatformConfig, day: dt.date) -> dict[str, Any]:
    """Score `day`'s kol_features, validate with GX and replace the day in kol_scores; return a
    summary. Raises KolScoresRejected (after a data-quality alert) when the suite fails."""
    with connect_writer(cfg) as con:
        features = con.execute(
            "select day, user_id, shares, visits, visits_per_share from kol_features where day = ? order by user_id",
            [day],
        ).df()
        if features.empty:
            log.warning("kol_features has no user for %s (nobody shared in the window): nothing to score", day)
        scores, prior = score(features, cfg.kol.kol_percentile)
        publish_scores(cfg, con, day, scores)
    summary = {
        "day": day.isoformat(),
        "users": len(scores),
        "kols": int(scores.is_kol.sum()),
        "prior_shape": prior.shape,
        "prior_rate": prior.rate,
    }
    log.info("kol_scores %s", summary)
    return summary


def publish_scores(cfg: PlatformConfig, con: duckdb.DuckDBPyConnection, day: dt.date, scores: pd.DataFrame) -> None:
    """Validate `scores` (one day) with GX, then replace the day in kol_scores in one transaction;
    on failure raise a data-quality alert and KolScoresRejected, writing nothing."""
    from expectations.runner import require_valid, validate_frame  # lazy: GX: 7 s, kept out of DAG parsing
    from expectations.social import kol_score_expectations  # lazy: as above

    outcome = validate_frame(scores, "kol_scores", kol_score_expectations())
    require_valid(
        cfg, outcome, KolScoresRejected, source="kol_scoring.score",
        title=f"KOL scores of {day} rejected: the day's previous scores stay",
        details={"day": day.isoformat(), "rows": len(scores)},
    )
    if scores.empty:  # upsert replaces the days its rows carry: a day left with no score is cleared here
        con.execute(f"create table if not exists {TABLE} ({_COLUMNS})")
        con.execute(f"delete from {TABLE} where day = ?", [day])
    else:
        upsert(con, TABLE, scores, ["day"], columns=_COLUMNS)


def score_days(cfg: PlatformConfig, ds_from: str, ds: str) -> list[dict[str, Any]]:
    """Score every day of [ds_from, ds], oldest first."""
    days = day_range(dt.date.fromisoformat(ds_from), dt.date.fromisoformat(ds))
    return [score_day(cfg, d) for d in days]
