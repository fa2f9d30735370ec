"""The declarative platform config (config/recpipe.yaml), validated by pydantic on load.

Relative paths in the file are resolved against the repository root. Two environment variables
redirect a run without editing the file: RECPIPE_CONFIG (another config file) and
RECPIPE_DATA_DIR (another data root; every path under `paths` that is relative moves with it).
"""

from __future__ import annotations

import datetime as dt
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.core.contract import AGE_BUCKETS, GENDERS
from tasks.core.storage import Location, is_url, location

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config" / "recpipe.yaml"
IDENTIFIER = r"^[a-z][a-z0-9_]*$"
ALL = "all"  # the slice that holds everyone: every segment, every bucket (reserved as a name)


class ConfigError(ValueError):
    """The config file is missing, unparseable, or fails validation (names file and key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Strict):
    """Where data lives. Relative paths are under the data root (RECPIPE_DATA_DIR or data/). The
    lake, the artifacts and the reports may be fsspec URLs (s3://bucket/prefix), each protocol
    with its `storage_options` (e.g. s3: {endpoint_url: ...}; credentials from the environment)."""

    data_root: str = "data"
    landing: str = "landing"
    lake: str = "lake"
    warehouse: str = "warehouse.duckdb"
    ground_truth: str = "ground_truth"
    alerts_log: str = "alerts/alerts.jsonl"
    reports: str = "reports"
    artifacts: str = "artifacts"  # versioned models and ANN indexes (tasks/core/artifacts.py)
    storage_options: dict[str, dict[str, Any]] = {}

    @field_validator("data_root", "landing", "warehouse", "ground_truth", "alerts_log")
    @classmethod
    def _local(cls, v: str, info) -> str:
        if is_url(v):
            raise ValueError(f"{v!r}: {info.field_name} must be a local path (only lake, artifacts and "
                             "reports may be URLs)")
        return v


class SimulatorConfig(_Strict):
    """Defaults of the built-in simulator; `recpipe simulate` flags override them."""

    seed: int = 42
    start_date: dt.date = dt.date(2026, 1, 1)
    days: Annotated[int, Field(ge=1)] = 30
    users: Annotated[int, Field(ge=10)] = 5_000
    items: Annotated[int, Field(ge=10)] = 3_000
    new_users_per_day: Annotated[float, Field(ge=0)] = 0.01
    creator_share: Annotated[float, Field(gt=0, le=1)] = 0.05
    kol_share: Annotated[float, Field(gt=0, le=1)] = 0.01
    categories_l1: Annotated[int, Field(ge=2, le=100)] = 10
    categories_l2_per_l1: Annotated[int, Field(ge=1, le=50)] = 5
    content_clusters: Annotated[int, Field(ge=1)] = 200
    experiment_buckets: tuple[str, ...] = ("control", "treatment_a", "treatment_b")
    exposure_policy: Annotated[str, Field(pattern=IDENTIFIER)] = "default"
    # With exposure_policy `recpipe` (the closed loop): the first days are served by the `default`
    # organic policy, a history for the first nightly models to learn from.
    organic_days: Annotated[int, Field(ge=1)] = 14
    # Exposure mix of the default policy: popular (yesterday's clicks), fresh (published in the
    # last `fresh_days` days), and the rest interest-matched.
    exposure_popular_share: Annotated[float, Field(ge=0, le=1)] = 0.3
    exposure_fresh_share: Annotated[float, Field(ge=0, le=1)] = 0.2
    fresh_days: Annotated[int, Field(ge=1, le=90)] = 3
    # Activity and retention: logit P(active on d) = activity_u + [active on d-1] *
    # (habit_effect + satisfaction_effect * (satisfaction_u(d-1) - 0.5)) + follow_effect * log1p(follows_u),
    # with activity_u ~ Normal(activity_logit_mean, activity_logit_sd).
    activity_logit_mean: Annotated[float, Field(ge=-10, le=10)] = -2.3
    activity_logit_sd: Annotated[float, Field(ge=0, le=5)] = 1.4
    habit_effect: Annotated[float, Field(ge=0, le=10)] = 1.6
    satisfaction_effect: Annotated[float, Field(ge=0, le=10)] = 2.0
    follow_effect: Annotated[float, Field(ge=0, le=5)] = 0.25
    # Engagement of an active user.
    sessions_per_active_user: Annotated[float, Field(ge=1, le=20)] = 1.4
    impressions_per_session: Annotated[float, Field(ge=1, le=200)] = 4.5
    # UGC, sharing and the follow graph.
    publish_rate: Annotated[float, Field(ge=0, le=20)] = 0.3  # items per active creator per day
    offsite_visits_per_share: Annotated[float, Field(ge=0, le=100)] = 0.5  # mean, ordinary sharers
    kol_visit_multiplier: Annotated[float, Field(ge=1, le=1000)] = 40.0  # KOLs' shares bring this x more
    unfollow_rate: Annotated[float, Field(ge=0, le=1)] = 0.002  # per follow edge of an active user per day
    # Levers of the causal model (docs/METHODS.md "Simulator levers"); 0 turns each path off.
    # Category fatigue: click logit -= fatigue_effect * earlier impressions of the item's category_l2 in the
    # session; satisfaction -= fatigue_effect * share of such repeated impressions.
    fatigue_effect: Annotated[float, Field(ge=0, le=5)] = 0.1
    variety_effect: Annotated[float, Field(ge=0, le=5)] = 0.25  # satisfaction per distinct l1 category clicked
    # Discovery: a click on an item of one of the user's dormant categories adds this to its interest weight.
    discovery_rate: Annotated[float, Field(ge=0, le=1)] = 0.1
    # Creators publish exp(fan_publish_effect * log1p(new fans) + comment_publish_effect * log1p(comments
    # received)) times more, both counted over the last 7 days.
    fan_publish_effect: Annotated[float, Field(ge=0, le=5)] = 0.15
    comment_publish_effect: Annotated[float, Field(ge=0, le=5)] = 0.05
    offsite_signup_share: Annotated[float, Field(ge=0, le=1)] = 0.02  # offsite visits by people signing up
    # New users (within new_user_days of signup, signup day = day 0): the satisfaction term of their return
    # logit is scaled by (1 + new_user_satisfaction_boost), and each share of their impressions below
    # low_quality_threshold (latent quality) lowers their satisfaction by new_user_low_quality_penalty.
    new_user_days: Annotated[int, Field(ge=0, le=365)] = 7
    new_user_satisfaction_boost: Annotated[float, Field(ge=0, le=10)] = 0.5
    new_user_low_quality_penalty: Annotated[float, Field(ge=0, le=10)] = 1.0
    low_quality_threshold: Annotated[float, Field(ge=0, le=1)] = 0.3
    # Daily state snapshots kept under ground_truth_dir (the daily mode resumes from them).
    state_snapshots_kept: Annotated[int, Field(ge=1, le=100)] = 3

    @field_validator("experiment_buckets")
    @classmethod
    def _control_first(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or v[0] != "control":
            raise ValueError("the first experiment bucket must be 'control'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SimulatorConfig":
        if self.content_clusters < self.categories_l1 * self.categories_l2_per_l1:
            raise ValueError(
                "content_clusters must be >= categories_l1 * categories_l2_per_l1 "
                "(clusters are nested in second-level categories)"
            )
        if self.exposure_popular_share + self.exposure_fresh_share > 1:
            raise ValueError("exposure_popular_share + exposure_fresh_share must be <= 1")
        return self


class NewUsersSegment(_Strict):
    kind: Literal["new_users"]
    name: Annotated[str, Field(pattern=IDENTIFIER)]
    max_days_since_signup: Annotated[int, Field(ge=0)] = 7


class LowActivitySegment(_Strict):
    kind: Literal["low_activity"]
    name: Annotated[str, Field(pattern=IDENTIFIER)]
    window_days: Annotated[int, Field(ge=1)] = 14
    max_active_days: Annotated[int, Field(ge=1)] = 3


class DemographicSegment(_Strict):
    kind: Literal["demographic"]
    name: Annotated[str, Field(pattern=IDENTIFIER)]
    gender: tuple[str, ...] = ()
    age_bucket: tuple[str, ...] = ()
    city_tier: tuple[Annotated[int, Field(ge=0, le=5)], ...] = ()

    @model_validator(mode="after")
    def _known_values(self) -> "DemographicSegment":
        bad = [g for g in self.gender if g not in GENDERS] + [
            a for a in self.age_bucket if a not in AGE_BUCKETS
        ]
        if bad:
            raise ValueError(f"unknown demographic values {bad}")
        if not (self.gender or self.age_bucket or self.city_tier):
            raise ValueError("a demographic segment needs at least one of gender, age_bucket, city_tier")
        return self


Segment = Annotated[
    NewUsersSegment | LowActivitySegment | DemographicSegment, Field(discriminator="kind")
]


# Content pools (docs/METHODS.md "Content pools") -----------------------------------------------------------
POOL_ACTIONS = ("impression", "click", "like", "favorite", "share", "comment", "follow")


class PoolScore(_Strict):
    """Score = the target segment's smoothed rate of `action` per `per` over the candidate's events
    so far: (actions + prior_weight * r0) / (per + prior_weight), r0 = the rate over all candidates
    (empirical Bayes), so 1 click of 1 impression does not beat 900 of 1,000."""

    action: Literal["click", "like", "favorite", "share", "comment", "follow"] = "click"
    per: Literal["impression", "click"] = "impression"
    min_impressions: Annotated[int, Field(ge=0)] = 20  # the segment's impressions of the item
    prior_weight: Annotated[float, Field(ge=0)] = 100.0  # in units of `per`

    @model_validator(mode="after")
    def _a_rate(self) -> "PoolScore":
        if POOL_ACTIONS.index(self.action) <= POOL_ACTIONS.index(self.per):
            raise ValueError(f"action {self.action!r} per {self.per!r} is not a rate (action must follow per)")
        return self


class PoolFilters(_Strict):
    min_rate: Annotated[float, Field(ge=0, le=1)] = 0.0  # on the smoothed rate
    exclude_expired: bool = True  # items whose expire_ts has passed at the refresh


class PoolConfig(_Strict):
    """One content pool: candidates published within `window` before the refresh, scored for each
    target segment (none: everyone), filtered, the best `max_size` kept per segment."""

    name: Annotated[str, Field(pattern=IDENTIFIER, max_length=40)]
    window: Annotated[str, Field(pattern=r"^[1-9][0-9]*[hd]$")]  # e.g. 30d, 1d, 6h
    segments: tuple[Annotated[str, Field(pattern=IDENTIFIER)], ...] = ()  # one ranked list each
    score: PoolScore = PoolScore()
    filters: PoolFilters = PoolFilters()
    max_size: Annotated[int, Field(ge=1, le=1_000_000)]
    min_size: Annotated[int, Field(ge=0)] = 1  # GX: a refresh with fewer members per segment fails
    refresh: Literal["daily", "hourly"] = "daily"

    @property
    def window_hours(self) -> int:
        n = int(self.window[:-1])
        return n * 24 if self.window.endswith("d") else n

    @model_validator(mode="after")
    def _sizes(self) -> "PoolConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} is above max_size {self.max_size}")
        if len(set(self.segments)) != len(self.segments):
            raise ValueError("segments are listed twice")
        return self


class KolConfig(_Strict):
    """KOL scoring (docs/METHODS.md "KOL scoring"): visits that users' shares brought from off the platform."""

    window_days: Annotated[int, Field(ge=1, le=365)] = 30
    kol_percentile: Annotated[float, Field(gt=0, lt=1)] = 0.99  # is_kol: score percentile at or above


class ImplicitFollowWeights(_Strict):
    click: Annotated[float, Field(ge=0)] = 1.0
    dwell_minute: Annotated[float, Field(ge=0)] = 0.5
    like: Annotated[float, Field(ge=0)] = 2.0


class ImplicitFollowsConfig(_Strict):
    """Implicit follows (docs/METHODS.md "Implicit follows" U2A2I): authors a user engages with a lot without following them."""

    window_days: Annotated[int, Field(ge=1, le=365)] = 14
    min_clicks: Annotated[int, Field(ge=1)] = 2
    top_n: Annotated[int, Field(ge=1, le=1000)] = 20
    weights: ImplicitFollowWeights = ImplicitFollowWeights()


# Retrieval (docs/METHODS.md "Retrieval channels" aged models) -------------------------------------------------------
class TwoTowerConfig(_Strict):
    """Two-tower retrieval: towers, in-batch softmax with logQ correction, negatives, aged training."""

    dim: Annotated[int, Field(ge=4, le=1024)] = 32
    temperature: Annotated[float, Field(gt=0, le=10)] = 0.05
    batch_size: Annotated[int, Field(ge=8)] = 512
    learning_rate: Annotated[float, Field(gt=0)] = 0.005
    first_epochs: Annotated[int, Field(ge=1)] = 3  # a cold start (no current version): epochs over the window
    logq_correction: bool = True  # logit - log p_j, p_j = item j's share of the training positives
    random_negatives: Annotated[int, Field(ge=0)] = 0  # per batch, sampled with popularity^0.75
    hard_negatives: Annotated[int, Field(ge=0)] = 0  # per positive: shown to the user, not clicked
    sequence_length: Annotated[int, Field(ge=0, le=1000)] = 20  # recent positives in the user tower
    warm_start: bool = True  # aged ("old soup") training: from the current version, 1 epoch on the new day
    seed: int = 7


class ItemCFConfig(_Strict):
    top_k: Annotated[int, Field(ge=1, le=1000)] = 50
    max_users_per_item: Annotated[int, Field(ge=2)] = 1000  # sampled above this (cost cap)
    heavy_user_damping: bool = False  # weight each user by (|I_u| + 5)^-0.35


class SwingConfig(_Strict):
    alpha: Annotated[float, Field(gt=0)] = 1.0
    top_k: Annotated[int, Field(ge=1, le=1000)] = 50
    max_users_per_item: Annotated[int, Field(ge=2)] = 1000
    heavy_user_damping: bool = True


class UserCFConfig(_Strict):
    """U2U2I: the liked items of the most similar users."""

    top_k_users: Annotated[int, Field(ge=1, le=1000)] = 50
    max_users_per_item: Annotated[int, Field(ge=2)] = 1000


class AuthorChannelsConfig(_Strict):
    """U2A2I (explicit + implicit follows -> the authors' items) and U2A2A2I (-> similar authors)."""

    items_per_author: Annotated[int, Field(ge=1)] = 10  # an author's most clicked recent items
    similar_authors: Annotated[int, Field(ge=1)] = 20  # per author, by co-engagement


class RetrievalConfig(_Strict):
    positive_event: Literal["click", "like"] = "click"  # what counts as a positive (user, item) pair
    train_window_days: Annotated[int, Field(ge=1, le=365)] = 30
    seed_items: Annotated[int, Field(ge=1, le=1000)] = 20  # U2I2I: the user's most recent positives
    two_tower: TwoTowerConfig = TwoTowerConfig()
    itemcf: ItemCFConfig = ItemCFConfig()
    swing: SwingConfig = SwingConfig()
    u2u2i: UserCFConfig = UserCFConfig()
    authors: AuthorChannelsConfig = AuthorChannelsConfig()
    # trained, gated and published by the nightly_training DAG (the other channels are fitted at
    # serving time from the day's data); every name must be a registry model of tasks/retrieval/nightly.py
    nightly_models: tuple[Literal["two_tower", "itemcf", "swing"], ...] = ("two_tower", "itemcf", "swing")
    versions_kept: Annotated[int, Field(ge=1)] = 5  # per model; the current version is never deleted


class EvaluationConfig(_Strict):
    """Offline evaluation: train on days <= d, evaluate on the clicks of d + 1."""

    k: tuple[Annotated[int, Field(ge=1, le=5000)], ...] = (50, 100)
    tail_share: Annotated[float, Field(gt=0, lt=1)] = 0.8  # tail = the least clicked share of items
    # nightly gate (docs/METHODS.md "Nightly retrieval gate and publish"): reject a candidate only if the lower bound of
    # the paired bootstrap CI of its relative Recall@k[0] drop vs the current version exceeds max_recall_drop
    max_recall_drop: Annotated[float, Field(ge=0, le=1)] = 0.05  # the smallest relative drop that matters
    # ... on a night whose clicks the recommendation path chose (the closed loop): the current version
    # helped choose what was shown, so the comparison on those clicks favours it; only a larger drop counts
    max_recall_drop_served: Annotated[float, Field(ge=0, le=1)] = 0.5
    # resamples and seed of every bootstrap over the evaluation users: the gate's paired CI and each metric's CI
    gate_bootstrap: Annotated[int, Field(ge=100, le=100_000)] = 1000  # resamples of the evaluation users
    gate_alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01  # the CI is two-sided, 1 - gate_alpha
    gate_seed: int = 7
    # offline metrics (retrieval_eval, funnel_eval): a two-sided 1 - ci_alpha percentile bootstrap CI over users;
    # a value over fewer than min_users users is flagged (below_min_users) and warned about
    ci_alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    min_users: Annotated[int, Field(ge=1)] = 200
    # users evaluated per night: every user with a next-day click, or this many of them (a stable hash
    # sample): scoring a user against the whole catalogue makes an evaluation users x items
    max_users: Annotated[int, Field(ge=1)] = 50_000


RANKING_HEADS: tuple[str, ...] = ("click", "like", "favorite", "share", "comment", "follow", "long_view")
FAULTS: tuple[str, ...] = ("none", "scaled_x3", "constant_half", "shuffled", "nan_5pct", "leaked_labels", "shifted_0_2",
                          "duplicated_5pct", "wrong_user_10pct", "wrong_item_10pct", "segment_x3")


class FullRankingConfig(_Strict):
    """The multi-objective full ranker (docs/METHODS.md "Full ranker (MMoE + DIN)"): MMoE over user, item, author and context
    features plus the behaviour sequence with candidate attention (DIN), one head per target."""

    long_view_seconds: Annotated[float, Field(gt=0)] = 30.0  # the long_view label: a click with this dwell
    embedding_dim: Annotated[int, Field(ge=2, le=256)] = 16
    experts: Annotated[int, Field(ge=1, le=32)] = 4
    expert_hidden: Annotated[int, Field(ge=4)] = 64
    tower_hidden: Annotated[int, Field(ge=4)] = 32
    # the experts also get interest * candidate (the attended history's match with the candidate); a
    # current version trained without it cannot be warm-started with it (and back): change it with a cold start
    interaction: bool = True
    # the experts also get log(1 + how many of the sequence's clicks share the candidate's item, author,
    # categories and cluster): the intensity of the user's interest that the softmax attention pools
    # away; like interaction, a change needs a cold start
    match_counts: bool = True
    sequence_length: Annotated[int, Field(ge=1, le=500)] = 20
    history_days: Annotated[int, Field(ge=0, le=365)] = 30  # sequences read the clicks from this many days before
    batch_size: Annotated[int, Field(ge=16)] = 1024
    learning_rate: Annotated[float, Field(gt=0)] = 0.003
    first_window_days: Annotated[int, Field(ge=1)] = 7  # cold start: the days before the first night
    first_epochs: Annotated[int, Field(ge=1)] = 2
    warm_start: bool = True  # aged: warm-start from the current version, 1 epoch on the new day
    seed: int = 7
    # fusion formula (docs/METHODS.md "Full ranker (MMoE + DIN)"): score = sum_k w_k * p_k
    fusion_weights: dict[str, float] = {"click": 1.0, "like": 2.0, "favorite": 2.0, "share": 3.0,
                                        "comment": 3.0, "follow": 4.0, "long_view": 1.0}
    # planted bug on the scoring of the distillation set (tests and drills only; "none" in production)
    fault_injection: Literal[FAULTS] = "none"  # type: ignore[valid-type]

    @field_validator("fusion_weights")
    @classmethod
    def _known_heads(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(RANKING_HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; heads: {', '.join(RANKING_HEADS)}")
        return v


class DistillationGateConfig(_Strict):
    """The GX gate on the full ranker's predictions before pre-ranking distils them (docs/METHODS.md "Distillation set and gate")."""

    min_coverage: Annotated[float, Field(gt=0, le=1)] = 1.0  # share of the day's exposures scored
    # tolerated mean prediction / true rate per head and segment: a slice fails when the confidence
    # interval of its ratio (exact Poisson on its positives, level alpha) lies outside the band
    calibration_band: tuple[float, float] = (0.67, 1.5)
    calibration_min_positives: Annotated[int, Field(ge=1)] = 30  # the report highlights slices with this many
    auc_band: tuple[float, float] = (0.55, 0.97)  # too low: broken; too high: labels leaked
    auc_min_positives: Annotated[int, Field(ge=1)] = 30
    # per head, a drop from the last accepted day's AUC fails beyond max_auc_drop + z x the standard
    # error (DeLong) of the difference of the two days (nightly retraining: a tolerated true drop)
    max_auc_drop: Annotated[float, Field(ge=0, lt=1)] = 0.01
    # false-alarm probability per night of the calibration and of the AUC-drop check from sampling
    # noise alone, split over their slices (Bonferroni)
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.001
    # per head, against the last accepted day's predictions (20 quantile bins). Nightly retraining
    # legitimately moves them: on the simulator up to ~1.0 in the first aged nights, 0.01-0.3 once
    # settled; a broken ranker (constant, shifted, leaked) by 2 or more
    max_kl_divergence: Annotated[float, Field(gt=0)] = 2.0
    on_failure: Literal["label_only", "skip"] = "label_only"  # what pre-ranking trains on after a failed gate

    @field_validator("calibration_band")
    @classmethod
    def _around_one(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < 1 < v[1]:
            raise ValueError(f"calibration_band {list(v)}: need 0 < low < 1 < high")
        return v

    @field_validator("auc_band")
    @classmethod
    def _auc_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError(f"auc_band {list(v)}: need 0 <= low < high <= 1")
        return v


class PreRankingConfig(_Strict):
    """The pre-ranker (docs/METHODS.md "Pre-ranker"): a multi-vector two-tower (one user vector per target, one item
    vector) distilled from the full ranker."""

    dim: Annotated[int, Field(ge=2, le=256)] = 16
    targets: tuple[Literal[RANKING_HEADS], ...] = ("click", "like", "long_view")  # type: ignore[valid-type]
    loss: Literal["pointwise", "pairwise", "both"] = "pointwise"  # (y + p) / 2, and/or log(1 + exp(-(q_i - q_j)))
    pairs_per_group: Annotated[int, Field(ge=1)] = 16  # pairwise loss: at most this many per (user, day) and batch
    # small batches and a high rate: a night has one day of exposures (a few thousand rows here)
    batch_size: Annotated[int, Field(ge=16)] = 256
    learning_rate: Annotated[float, Field(gt=0)] = 0.01
    first_epochs: Annotated[int, Field(ge=1)] = 4
    warm_start: bool = True
    seed: int = 7


class SpecialGroupsConfig(_Strict):
    """Small models next to the full ranker for special user groups (docs/METHODS.md "Special user groups"): a residual model
    (logit space) for new and low-activity users, a GBDT calibrator for one segment."""

    residual_segments: tuple[str, ...] = ("new_users", "low_activity")  # names in `segments`
    calibrated_segment: str = "female_18_24"  # a name in `segments`
    heads: tuple[Literal[RANKING_HEADS], ...] | None = None  # type: ignore[valid-type]  # None: every head
    min_positives: Annotated[int, Field(ge=1)] = 30  # a head is trained only with this many positives
    days: Annotated[int, Field(ge=1)] = 3  # training window: the days ending on the training day
    ece_bins: Annotated[int, Field(ge=2)] = 10  # equal-frequency bins of the expected calibration error
    residual_hidden: Annotated[int, Field(ge=0)] = 0  # 0: a linear layer; else one hidden ReLU layer
    residual_l2: Annotated[float, Field(ge=0)] = 1e-3  # penalty on the weights, added to the mean BCE
    residual_max_iter: Annotated[int, Field(ge=1)] = 200  # full-batch L-BFGS iterations
    gbdt_max_iter: Annotated[int, Field(ge=1)] = 30  # boosting rounds per head (few thousand rows)
    gbdt_learning_rate: Annotated[float, Field(gt=0)] = 0.05
    gbdt_max_leaf_nodes: Annotated[int, Field(ge=2)] = 8
    gbdt_min_samples_leaf: Annotated[int, Field(ge=1)] = 40
    gbdt_l2_regularization: Annotated[float, Field(ge=0)] = 1.0
    seed: int = 7


# The aged-model protocols' run settings (tasks/ranking/aged_protocols.py, the architecture_comparison DAG's params)
PROTOCOLS = ("compare", "catch_up")
EMBEDDINGS = ("reuse", "random")
EMBEDDINGS_DEFAULT = "reuse"
ARCHITECTURE_KEYS = ("embedding_dim", "experts", "expert_hidden", "tower_hidden", "interaction", "match_counts",
                     "sequence_length")  # the full ranker's settings a candidate may override


class ArchitectureComparisonConfig(_Strict):
    """The aged-model protocols of the full ranker (docs/METHODS.md "Aged-model protocols", the architecture_comparison DAG):
    defaults of a run."""

    days: Annotated[int, Field(ge=1)] = 3  # training window: the days before the evaluation day
    min_positives: Annotated[int, Field(ge=1)] = 30  # a head is in the mean AUC with this many of each class
    keep_versions: Annotated[int, Field(ge=1)] = 3  # trained arms kept per (protocol, arm) in the throwaway store


class RankingConfig(_Strict):
    nightly: bool = True  # the nightly_training DAG trains the full ranker and the distilled pre-ranker
    full: FullRankingConfig = FullRankingConfig()
    gate: DistillationGateConfig = DistillationGateConfig()
    preranking: PreRankingConfig = PreRankingConfig()
    special_groups: SpecialGroupsConfig = SpecialGroupsConfig()
    architecture_comparison: ArchitectureComparisonConfig = ArchitectureComparisonConfig()


class TrainingConfig(_Strict):
    """How the embedding models (two-tower, full ranker, pre-ranker) read their examples and how many
    processes train them (docs/SCALE.md "Training that streams")."""

    # examples per chunk read from the lake (features are built per chunk); the default holds the
    # tests' training sets in one chunk, which reproduces whole-table training exactly
    read_batch_rows: Annotated[int, Field(ge=1)] = 65_536
    # > 1: data-parallel training in that many processes (torch.distributed, gloo, DDP), each
    # building the features of and encoding its share of every batch; same updates as one process
    processes: Annotated[int, Field(ge=1, le=64)] = 1


class AnnConfig(_Strict):
    """ANN index per content pool x vector model (faiss, inner product on normalised vectors)."""

    exact_below: Annotated[int, Field(ge=1)] = 20_000  # pools smaller than this get an exact index
    kind: Literal["hnsw", "ivf"] = "hnsw"
    hnsw_m: Annotated[int, Field(ge=4, le=128)] = 16
    ef_construction: Annotated[int, Field(ge=8)] = 100
    ef_search: Annotated[int, Field(ge=8)] = 128
    ivf_nlist: Annotated[int, Field(ge=1)] = 1024
    ivf_nprobe: Annotated[int, Field(ge=1)] = 32
    recall_k: Annotated[int, Field(ge=1)] = 100
    min_recall: Annotated[float, Field(gt=0, le=1)] = 0.95  # recall@recall_k vs exact, else keep the old index
    sample_queries: Annotated[int, Field(ge=10)] = 1000
    versions_kept: Annotated[int, Field(ge=1)] = 3
    vector_models: tuple[Literal["two_tower"], ...] = ("two_tower",)  # models with an index per pool


class IngestConfig(_Strict):
    """How batches arrive and when a batch is alarming."""

    source: Literal["simulator", "landing"] = "simulator"
    quarantine_alert_share: Annotated[float, Field(ge=0, le=1)] = 0.01


class Schedules(_Strict):
    """Cron strings or Airflow presets per DAG."""

    ingest: str = "@daily"
    pools_hourly: str = "@hourly"  # pools with `refresh: hourly`; daily pools follow daily_metrics


class AlertRoute(_Strict):
    """A Slack-compatible webhook; its URL is read from the environment variable named here."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    webhook_url_env: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$")]
    min_severity: Literal["info", "warning", "critical"] = "warning"


class AlertsConfig(_Strict):
    routes: tuple[AlertRoute, ...] = ()


ChannelKind = Literal["two_tower", "itemcf", "swing", "u2u2i", "u2a2i", "u2a2a2i", "pool", "popularity"]
BONUSES = ("follow", "fan", "comment", "kol_share")


class ChannelConfig(_Strict):
    """A retrieval channel: a model over a pool (two_tower: its ANN index of `pool`), an I2I or
    social channel, a pool served as it is ranked (`pool`), or popularity."""

    kind: ChannelKind
    pool: Annotated[str, Field(pattern=IDENTIFIER)] | None = None
    quota: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _pool_when_needed(self) -> "ChannelConfig":
        if (self.kind in ("two_tower", "pool")) != (self.pool is not None):
            raise ValueError(f"channel kind {self.kind!r}: `pool` is required for two_tower and pool channels only")
        return self


class BonusConfig(_Strict):
    """w(x) of a fusion bonus: inverse a / (1 + x / x0) (decreasing), linear a * x (increasing)."""

    function: Literal["inverse", "linear"] = "inverse"
    a: Annotated[float, Field(ge=0)]
    x0: Annotated[float, Field(gt=0)] = 1.0


class FusionConfig(_Strict):
    """score = sum_k weights[k] * p_k + sum_b w_b(x_b) * p_head(b) (docs/METHODS.md "Fusion and bonuses")."""

    weights: dict[str, Annotated[float, Field(ge=0)]] = {"click": 1.0, "like": 2.0, "favorite": 2.0, "share": 3.0,
                                                         "comment": 3.0, "follow": 4.0, "long_view": 1.0}
    bonuses: dict[Literal[BONUSES], BonusConfig] = {  # type: ignore[valid-type]
        "follow": BonusConfig(a=4.0, x0=5.0), "fan": BonusConfig(a=2.0, x0=20.0),
        "comment": BonusConfig(a=2.0, x0=5.0), "kol_share": BonusConfig(function="linear", a=3.0),
    }

    @field_validator("weights")
    @classmethod
    def _known_heads(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(RANKING_HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; heads: {', '.join(RANKING_HEADS)}")
        return v


# rel as eta weighs it against diversity: each user's scores min-max scaled to [0, 1] over their
# candidates (eta means the same whatever the scores' scale), or the scores as they are.
Relevance = Literal["minmax", "raw"]


class PreRankingSelectionConfig(_Strict):
    """Of the merged candidates: the top `interest` by pre-rank score, then `diverse` more by
    eta * rel + (1 - eta) * div against the whole selection."""

    interest: Annotated[int, Field(ge=1)] = 200
    diverse: Annotated[int, Field(ge=0)] = 300
    eta: Annotated[float, Field(ge=0, le=1)] = 0.7
    relevance: Relevance = "minmax"


class DiversityConfig(_Strict):
    """The feed's re-ranking: MMR or DPP with a sliding window, or none (scores' order); the spacing
    rules hold for every method (a gap of 0 turns one off)."""

    method: Literal["mmr", "dpp", "none"] = "dpp"
    eta: Annotated[float, Field(ge=0, lt=1)] = 0.7  # MMR eta; DPP theta (relevance vs diversity)
    relevance: Relevance = "minmax"
    window: Annotated[int, Field(ge=1)] = 10
    category_gap: Annotated[int, Field(ge=0)] = 5  # positions after an item without its category_l2
    cluster_gap: Annotated[int, Field(ge=0)] = 10  # positions after an item without its content cluster


class UserNoiseConfig(_Strict):
    """Gaussian noise on the user vector before ANN search: scale * (1 + narrow_boost * (1 - H/H_max)),
    H the entropy of the categories of the user's `recent_items` last positives."""

    scale: Annotated[float, Field(ge=0)] = 0.0
    narrow_boost: Annotated[float, Field(ge=0)] = 1.0
    recent_items: Annotated[int, Field(ge=1)] = 50


class SequenceSamplingConfig(_Strict):
    """Behaviour-sequence sampling for the two-tower user tower and the U2I2I seeds: the last
    `keep_last` items plus `sample_older` drawn from the older ones (category-balanced or not)."""

    enabled: bool = False
    keep_last: Annotated[int, Field(ge=1)] = 100
    sample_older: Annotated[int, Field(ge=0)] = 0
    category_balanced: bool = False


class ExplorationConfig(_Strict):
    share: Annotated[float, Field(ge=0, le=1)] = 0.02  # of each feed's slots
    pool: Annotated[str, Field(pattern=IDENTIFIER)] = "exploration"  # curated, per segment


class ProtectionConfig(_Strict):
    """New and low-activity users see no item below this quantile of the items' quality (smoothed CTR)."""

    segments: tuple[str, ...] = ("new_users", "low_activity")
    min_quality_quantile: Annotated[float, Field(ge=0, lt=1)] = 0.2


class StrategyConfig(_Strict):
    """A whole serving strategy (docs/METHODS.md "Recommendation path"); an experiment arm overrides any part."""

    total_quota: Annotated[int, Field(ge=1)] = 5000
    channels: dict[Annotated[str, Field(pattern=IDENTIFIER)], ChannelConfig]
    segment_quotas: dict[str, dict[str, Annotated[int, Field(ge=0)]]] = {}  # segment -> channel -> quota
    preranking: PreRankingSelectionConfig = PreRankingSelectionConfig()
    feed_length: Annotated[int, Field(ge=1, le=1000)] = 50
    fusion: FusionConfig = FusionConfig()
    diversity: DiversityConfig = DiversityConfig()
    user_noise: UserNoiseConfig = UserNoiseConfig()
    sequence_sampling: SequenceSamplingConfig = SequenceSamplingConfig()
    exploration: ExplorationConfig = ExplorationConfig()
    protection: ProtectionConfig = ProtectionConfig()

    @model_validator(mode="after")
    def _quotas_sum_to_total(self) -> "StrategyConfig":
        total = sum(c.quota for c in self.channels.values())
        if total != self.total_quota:
            raise ValueError(f"channel quotas sum to {total}, not total_quota {self.total_quota}")
        for segment, quotas in self.segment_quotas.items():
            unknown = set(quotas) - set(self.channels)
            if unknown:
                raise ValueError(f"segment_quotas.{segment}: unknown channels {sorted(unknown)}")
            total = sum(self.quota(name, (segment,)) for name in self.channels)
            if total != self.total_quota:
                raise ValueError(f"segment_quotas.{segment}: quotas sum to {total}, not total_quota {self.total_quota}")
        return self

    def quota(self, channel: str, segments: tuple[str, ...]) -> int:
        """The channel's quota for a user in `segments`: the first segment with an override wins."""
        for segment in segments:
            if channel in self.segment_quotas.get(segment, {}):
                return self.segment_quotas[segment][channel]
        return self.channels[channel].quota

    def scaled(self, factor: float) -> "StrategyConfig":
        """This strategy with every channel and segment quota and the pre-ranking counts times
        `factor` (rounded; each segment's largest quota takes the rounding, so its quotas still sum
        to total_quota): the same funnel, larger or smaller."""
        raw = self.model_dump()
        quotas = {name: round(c["quota"] * factor) for name, c in raw["channels"].items()}
        for name, q in quotas.items():
            raw["channels"][name]["quota"] = q
        raw["total_quota"] = sum(quotas.values())
        for segment, overrides in raw["segment_quotas"].items():
            new = {name: round(q * factor) for name, q in overrides.items()}
            if new:
                largest = max(new, key=new.get)
                new[largest] += raw["total_quota"] - sum(new.get(name, q) for name, q in quotas.items())
            raw["segment_quotas"][segment] = new
        raw["preranking"]["interest"] = max(1, round(raw["preranking"]["interest"] * factor))
        raw["preranking"]["diverse"] = round(raw["preranking"]["diverse"] * factor)
        return StrategyConfig.model_validate(raw)


def _merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class ServingConfig(_Strict):
    """The recommendation path: named strategies (each a full StrategyConfig; a strategy with
    `base: <name>` is that strategy with its own keys merged over it), the batch feeds and the
    online endpoint."""

    default_strategy: Annotated[str, Field(pattern=IDENTIFIER)] = "default"
    strategies: dict[Annotated[str, Field(pattern=IDENTIFIER)], StrategyConfig] = {
        "default": StrategyConfig(channels={  # model channels only: config/recpipe.yaml adds the pools
            "itemcf": ChannelConfig(kind="itemcf", quota=1500), "swing": ChannelConfig(kind="swing", quota=1500),
            "u2u2i": ChannelConfig(kind="u2u2i", quota=500), "u2a2i": ChannelConfig(kind="u2a2i", quota=500),
            "u2a2a2i": ChannelConfig(kind="u2a2a2i", quota=300),
            "popularity": ChannelConfig(kind="popularity", quota=700),
        })
    }
    batch_users: Literal["returning", "all"] = "returning"  # nightly feeds for users active lately, or all
    batch_strategies: tuple[Annotated[str, Field(pattern=IDENTIFIER)], ...] = ("default",)
    returning_days: Annotated[int, Field(ge=1)] = 7  # "active lately"; also the segment lookback
    seen_window_days: Annotated[int, Field(ge=1)] = 3  # items shown this many days back are not served again
    quality_window_days: Annotated[int, Field(ge=1)] = 14
    quality_prior_weight: Annotated[float, Field(gt=0)] = 50.0
    max_exploration_deviation: Annotated[float, Field(gt=0)] = 0.005  # GX: feeds' exploration share vs the setting
    versions_kept: Annotated[int, Field(ge=1)] = 3
    seed: int = 11
    processes: Annotated[int, Field(ge=1)] = 1  # worker processes of the batch and closed-loop feeds (one thread each)
    reload_check_seconds: Annotated[float, Field(gt=0)] = 5.0  # recpipe serve: how often it looks for new versions

    @model_validator(mode="before")
    @classmethod
    def _resolve_bases(cls, data: dict) -> dict:
        if not isinstance(data, dict) or "strategies" not in data:
            return data
        raw = dict(data["strategies"] or {})
        resolved: dict[str, dict] = {}

        def resolve(name: str, trail: tuple[str, ...]) -> dict:
            if name in resolved:
                return resolved[name]
            if name not in raw:
                raise ValueError(f"strategies: unknown base strategy {name!r} (known: {sorted(raw)})")
            if name in trail:
                raise ValueError(f"strategies: base cycle {' -> '.join((*trail, name))}")
            body = dict(raw[name] or {})
            base = body.pop("base", None)
            resolved[name] = _merged(resolve(base, (*trail, name)), body) if base else body
            return resolved[name]

        for name in raw:
            resolve(name, ())
        return {**data, "strategies": resolved}

    @model_validator(mode="after")
    def _default_exists(self) -> "ServingConfig":
        for name in (self.default_strategy, *self.batch_strategies):
            if name not in self.strategies:
                raise ValueError(f"strategy {name!r} (default_strategy / batch_strategies) is not among "
                                 f"{sorted(self.strategies)}")
        return self

    def strategy(self, name: str) -> StrategyConfig:
        """The named strategy (KeyError naming the known ones otherwise)."""
        if name not in self.strategies:
            raise KeyError(f"no strategy {name!r}; configured: {sorted(self.strategies)}")
        return self.strategies[name]

    def channel_kinds(self) -> set[str]:
        return {c.kind for s in self.strategies.values() for c in s.channels.values()}


EXPERIMENT_METRICS = ("dau", "lt7", "next_day_retention", "session_duration_s", "clicks", "penetration_rate",
                      "follows")


class ExperimentConfig(_Strict):
    """A named experiment (docs/METHODS.md "Experiments"): its users are a `traffic` share of its
    layer's hash space, split evenly over its arms; each arm is an override merged over the base
    strategy (an empty override is the base itself), the first arm is the control. Users are
    assigned from the first day; arms are served differently from `start` on (the days before are
    the pre-period of CUPED)."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    layer: Annotated[str, Field(pattern=IDENTIFIER)] = "main"  # a user is in at most one experiment per layer
    start: dt.date
    end: dt.date | None = None  # last served day (null: open-ended)
    traffic: Annotated[float, Field(gt=0, le=1)] = 1.0
    base_strategy: Annotated[str, Field(pattern=IDENTIFIER)] | None = None  # default: serving.default_strategy
    arms: dict[Annotated[str, Field(pattern=IDENTIFIER)], dict]
    metrics: tuple[Literal[EXPERIMENT_METRICS], ...] = EXPERIMENT_METRICS  # type: ignore[valid-type]
    # Simulator only: ground-truth effects planted per arm, to check that the readout recovers them
    # (satisfaction: added to the satisfaction of the arm's users on served days).
    planted: dict[Annotated[str, Field(pattern=IDENTIFIER)], dict[Literal["satisfaction"], float]] = {}

    @model_validator(mode="after")
    def _arms(self) -> "ExperimentConfig":
        if len(self.arms) < 2:
            raise ValueError(f"experiment {self.name!r}: at least two arms (the first is the control)")
        unknown = set(self.planted) - set(self.arms)
        if unknown:
            raise ValueError(f"experiment {self.name!r}: planted effects for unknown arms {sorted(unknown)}")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"experiment {self.name!r}: end {self.end} is before start {self.start}")
        return self

    @property
    def control(self) -> str:
        return next(iter(self.arms))


class WarehouseConfig(_Strict):
    """Where dbt builds the models (docs/SCALE.md "dbt on Spark"), and DuckDB's memory."""

    # the dbt target (dbt/profiles.yml): `duckdb`, the warehouse file; `spark`, Spark tables over the lake
    engine: Literal["duckdb", "spark"] = "duckdb"
    # DuckDB's memory_limit ("8GB", "512MiB", or a share of RAM: "50%") of every warehouse
    # connection, dbt's and the Python steps' (each process its own); past it DuckDB spills to
    # <warehouse file>.tmp/. None: DuckDB's default, 80% of RAM
    memory_limit: Annotated[str, Field(pattern=r"(?i)^\d+(\.\d+)?\s*([KMGT]i?B|B|%)$")] | None = None


class AirflowConfig(_Strict):
    """Airflow-side settings the DAGs share."""

    warehouse_pool: Annotated[str, Field(pattern=IDENTIFIER)] = "warehouse_writer"
    owner: str = "recpipe"
    retries: Annotated[int, Field(ge=0)] = 1
    # the first logical date of the DAGs (default: simulator.start_date); with your own data, its
    # first day: a run for an earlier day has no task to run
    start_date: dt.date | None = None
    # dbt in the DAGs: `per_model`, one task per model (its `dbt build`, so each model and its tests
    # show in the UI), or `per_dag`, one `dbt build` of the DAG's selection (one dbt start instead
    # of one per model: ~1.7 s per model less; config/demo.yaml)
    dbt_tasks: Literal["per_model", "per_dag"] = "per_model"


class PlatformConfig(_Strict):
    """The whole platform, as declared in config/recpipe.yaml."""

    paths: Paths = Paths()
    simulator: SimulatorConfig = SimulatorConfig()
    segments: tuple[Segment, ...] = ()
    pools: tuple[PoolConfig, ...] = ()
    kol: KolConfig = KolConfig()
    implicit_follows: ImplicitFollowsConfig = ImplicitFollowsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    ranking: RankingConfig = RankingConfig()
    training: TrainingConfig = TrainingConfig()
    ann: AnnConfig = AnnConfig()
    ingest: IngestConfig = IngestConfig()
    schedules: Schedules = Schedules()
    alerts: AlertsConfig = AlertsConfig()
    warehouse: WarehouseConfig = WarehouseConfig()
    airflow: AirflowConfig = AirflowConfig()
    serving: ServingConfig = ServingConfig()
    experiments: tuple[ExperimentConfig, ...] = ()

    @field_validator("segments", "pools", "experiments")
    @classmethod
    def _unique_names(cls, v: tuple, info) -> tuple:
        names = [item.name for item in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate {info.field_name[:-1]} names {dupes}")
        return v

    @model_validator(mode="after")
    def _pool_segments_known(self) -> "PlatformConfig":
        known = {s.name for s in self.segments}
        for i, pool in enumerate(self.pools):
            for j, seg in enumerate(pool.segments):
                if seg not in known:
                    raise ValueError(
                        f"pools.{i}.segments.{j}: pool {pool.name!r} targets unknown segment {seg!r} "
                        f"(known: {sorted(known)})"
                    )
        groups = self.ranking.special_groups
        for where, seg in [*((f"residual_segments.{i}", g) for i, g in enumerate(groups.residual_segments)),
                           ("calibrated_segment", groups.calibrated_segment)]:
            if seg not in known:
                raise ValueError(f"ranking.special_groups.{where}: unknown segment {seg!r} (known: {sorted(known)})")
        if self.warehouse.engine == "spark" and is_url(self.paths.lake):
            raise ValueError(f"paths.lake: the spark engine reads a local lake only (got {self.paths.lake!r}; "
                             "a lake on object storage needs Hadoop's s3a jars: use engine duckdb)")
        if "serving" in self.model_fields_set:
            self._serving_names_known(known)
        self._experiments_valid()
        return self

    def _serving_names_known(self, segments: set[str]) -> None:
        pools = {p.name for p in self.pools}
        for name, s in self.serving.strategies.items():
            where = f"serving.strategies.{name}"
            for channel, c in s.channels.items():
                if c.kind == "pool" and c.pool not in pools:
                    raise ValueError(f"{where}.channels.{channel}: unknown pool {c.pool!r} (known: {sorted(pools)})")
                if c.kind == "two_tower" and c.pool not in pools:
                    raise ValueError(f"{where}.channels.{channel}: no pool {c.pool!r} to hold its ANN index")
            if s.exploration.share and s.exploration.pool not in pools:
                raise ValueError(f"{where}.exploration.pool: unknown pool {s.exploration.pool!r}")
            for what, names in (("segment_quotas", s.segment_quotas), ("protection.segments", s.protection.segments)):
                unknown = set(names) - segments
                if unknown:
                    raise ValueError(f"{where}.{what}: unknown segments {sorted(unknown)} (known: {sorted(segments)})")

    def _experiments_valid(self) -> None:
        share: dict[str, float] = {}
        for i, e in enumerate(self.experiments):
            share[e.layer] = share.get(e.layer, 0.0) + e.traffic
            if share[e.layer] > 1 + 1e-9:
                raise ValueError(f"experiments.{i}: layer {e.layer!r} holds more than all users "
                                 f"(traffic sums to {share[e.layer]:.2f})")
            base = e.base_strategy or self.serving.default_strategy
            if base not in self.serving.strategies:
                raise ValueError(f"experiments.{i}.base_strategy: unknown strategy {base!r} "
                                 f"(known: {sorted(self.serving.strategies)})")
            for arm, override in e.arms.items():
                try:
                    self.arm_strategy(e, arm)
                except (ValidationError, KeyError) as err:
                    raise ValueError(f"experiments.{i}.arms.{arm}: {err}") from None

    def arm_strategy(self, experiment: ExperimentConfig, arm: str, on: StrategyConfig | None = None) -> StrategyConfig:
        """The strategy an arm serves: its override merged over the experiment's base strategy (its
        own `base:` or the experiment's), or over `on` (another layer's arm: layers compose)."""
        override = dict(experiment.arms[arm] or {})
        base = override.pop("base", None) or experiment.base_strategy or self.serving.default_strategy
        under = on if on is not None else self.serving.strategy(base)
        return StrategyConfig.model_validate(_merged(under.model_dump(), override))

    def experiment(self, name: str) -> ExperimentConfig:
        """The experiment called `name` (KeyError naming the known ones otherwise)."""
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(f"no experiment {name!r}; configured: {[e.name for e in self.experiments]}")

    def pool(self, name: str) -> PoolConfig:
        """The pool called `name` (KeyError naming the known ones otherwise)."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(f"no pool {name!r}; configured: {[p.name for p in self.pools]}")

    def exploration_pools(self) -> set[str]:
        """The exploration pools of every strategy and experiment arm: the `channel` labels of the
        exploration slots of served feeds."""
        arms = [self.arm_strategy(e, arm) for e in self.experiments for arm in e.arms]
        return {s.exploration.pool for s in (*self.serving.strategies.values(), *arms)}

    # Resolved locations -------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        env = os.environ.get("RECPIPE_DATA_DIR")
        root = Path(env) if env else Path(self.paths.data_root)
        return root if root.is_absolute() else (REPO_ROOT / root).resolve()

    def _under_root(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.data_root / path

    @property
    def landing_dir(self) -> Path:
        return self._under_root(self.paths.landing)

    def _stored(self, spec: str) -> Location:
        return location(spec, self.data_root, self.paths.storage_options)

    @property
    def lake_dir(self) -> Location:
        return self._stored(self.paths.lake)

    @property
    def warehouse_path(self) -> Path:
        return self._under_root(self.paths.warehouse)

    @property
    def ground_truth_dir(self) -> Path:
        return self._under_root(self.paths.ground_truth)

    @property
    def alerts_log(self) -> Path:
        return self._under_root(self.paths.alerts_log)

    @property
    def reports_dir(self) -> Location:
        return self._stored(self.paths.reports)

    @property
    def artifacts_dir(self) -> Location:
        return self._stored(self.paths.artifacts)


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid platform config ({err.error_count()} error(s))"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def _read_raw(path: Path, trail: tuple[Path, ...] = ()) -> dict:
    """The file's mapping; with `extends: <file>` (relative to it), that file's mapping with this
    one's keys merged over it (mappings merged key by key, anything else replaced)."""
    if path.resolve() in trail:
        raise ConfigError(f"{path}: `extends` cycle through {' -> '.join(str(t) for t in trail)}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    return _merged(_read_raw(path.parent / str(base), (*trail, path.resolve())), raw)


def load_config(path: str | Path | None = None) -> PlatformConfig:
    """Read and validate the platform config; errors name the file and the offending key. A file
    may start from another (`extends: recpipe.yaml`) and change only what differs."""
    path = Path(path or os.environ.get("RECPIPE_CONFIG") or DEFAULT_CONFIG)
    raw = _read_raw(path)
    try:
        return PlatformConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(path, e)) from None


@lru_cache(maxsize=8)
def _cached(path: str, data_dir: str | None) -> PlatformConfig:
    return load_config(path)


def get_config() -> PlatformConfig:
    """The config of this process (cached per config path and data dir)."""
    path = os.environ.get("RECPIPE_CONFIG") or str(DEFAULT_CONFIG)
    return _cached(path, os.environ.get("RECPIPE_DATA_DIR"))
