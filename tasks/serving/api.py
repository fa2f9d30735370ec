"""The online endpoint (`recpipe serve`): one user's feed over HTTP, through the same funnel as the
nightly batch feeds (tasks/serving/funnel.py), from the artifacts current now.

- `GET /feed/{user_id}?n=&strategy=&explain=`: the first n items of the user's feed (an unknown
  user gets the cold-start feed); with `explain`, every column of the funnel's rows and the user's
  funnel counts. A malformed request is a 422 naming the field; 503 until a context is loaded.
- `GET /healthz`: what is served (day, versions, broken pieces, when loaded and last checked).
- `GET /metrics`: request counts and end-to-end latency per route, and the wall time of each
  funnel stage, in the Prometheus text format.

Reload without a restart: a watcher thread reads, every `serving.reload_check_seconds`, what is
current — the CURRENT pointer of every artifact store the serving context reads, the pools'
current versions and the latest data day — and when it differs from what the served context was
loaded from, loads a new context and swaps it in with one reference assignment. A request reads
that reference once, so it is computed from one context; a published context is never mutated
(the funnel only reads it, `broken` included), so concurrent requests share it without a lock.
The ANN indexes are the exception: `ann_refresh.search` reads the index current at each call.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as UrlPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig
from tasks.core.storage import Location
from tasks.core.warehouse import table_names
from tasks.ranking import full as full_ranking
from tasks.ranking import pre as preranking
from tasks.ranking import special_groups
from tasks.retrieval import ann_refresh
from tasks.retrieval.data import connect_read
from tasks.serving.context import ServingContext, last_data_day, load_context
from tasks.serving.funnel import recommend

log = logging.getLogger(__name__)
SUMMARY_COLUMNS = ("position", "item_id", "channels", "decision", "prerank", "score")
MAX_USER_ID = 2**63 - 1  # user ids are BIGINT (docs/CONTRACT.md)


@dataclass(frozen=True)
class Current:
    """What a serving context is loaded from; equal values load the same context."""

    pointers: tuple[tuple[str, str | None], ...]  # artifact store -> its CURRENT pointer (None: none yet)
    pools: tuple[tuple[str, str], ...]  # pool -> current version
    data_day: dt.date  # the last day of data served from: the pinned day, else the latest
    latest_data_day: dt.date = field(compare=False)


@dataclass(frozen=True)
class Served:
    """A loaded serving context and what it was loaded from."""

    ctx: ServingContext
    source: Current
    loaded_at: dt.datetime
    load_seconds: float


def pointer_stores(cfg: PlatformConfig) -> list[Location]:
    """The artifact stores whose current version `load_context` reads: the registry models, the
    special-group models and the two-tower ANN index of every pool a channel searches."""
    models = ("two_tower", "itemcf", "swing", preranking.MODEL, full_ranking.MODEL)
    pools = sorted({c.pool for s in cfg.serving.strategies.values() for c in s.channels.values()
                    if c.kind == "two_tower"})
    return [*(registry.model_store(cfg, m) for m in models), special_groups.residual_store(cfg),
            special_groups.calibrator_store(cfg, cfg.ranking.special_groups.calibrated_segment),
            *(ann_refresh.index_store(cfg, "two_tower", p) for p in pools)]


def _pointer(store: Location) -> str | None:
    try:
        return (store / artifacts.POINTER).read_text()
    except FileNotFoundError:
        return None


def current(cfg: PlatformConfig, day: dt.date | None) -> Current:
    """What is current now; `day` pins the last day of data (else the latest with events)."""
    with connect_read(cfg) as con:
        pools = (tuple(con.execute("select pool, version from pool_current order by pool").fetchall())
                 if "pool_current" in table_names(con) else ())
    latest = last_data_day(cfg)
    return Current(tuple((str(s), _pointer(s)) for s in pointer_stores(cfg)), pools, day or latest, latest)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts: Python scalars, None for NaN (an exploration item has no scores)."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
            for r in df.to_dict(orient="records")]


class FeedServer:
    """The served context, the watcher thread that replaces it when what is current moves, and
    the request metrics."""

    def __init__(self, cfg: PlatformConfig, day: dt.date | None = None) -> None:
        self.cfg, self.day = cfg, day
        self.served: Served | None = None  # replaced whole, never mutated
        self.checked_at: dt.datetime | None = None
        self.latest_data_day: dt.date | None = None
        self.last_error: str | None = None
        self.metrics = CollectorRegistry()
        self.requests = Counter("recpipe_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.metrics)
        self.latency = Histogram("recpipe_request_seconds", "End-to-end request latency by route", ["route"],
                                 registry=self.metrics)
        self.stages = Histogram("recpipe_feed_stage_seconds", "Wall time of each funnel stage of a feed request",
                                ["stage"], registry=self.metrics)
        self.loads = Counter("recpipe_context_loads", "Serving-context loads by outcome", ["outcome"],
                             registry=self.metrics)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="recpipe-serve-reload", daemon=True)

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while True:
            self.check()
            if self._stop.wait(self.cfg.serving.reload_check_seconds):
                return

    def _failed(self, what: str, e: Exception) -> None:
        message = f"{what}: {type(e).__name__}: {e}"
        if message != self.last_error:  # once per distinct error, not every check
            log.warning("%s; %s", message, "nothing to serve yet" if self.served is None else
                        "serving the context loaded before")
        self.last_error = message

    def check(self) -> None:
        """Load a new context when what is current differs from what the served one was loaded
        from; on any failure (a warehouse locked by a writer, no data yet) keep serving the old."""
        try:
            now = current(self.cfg, self.day)
        except Exception as e:  # any failure to read the pointers: try again at the next check
            self._failed("checking what is current", e)
            return
        self.checked_at, self.latest_data_day = _now(), now.latest_data_day
        if self.served is not None and self.served.source == now:
            return
        log.info("loading the serving context of %s (data through %s)", now.data_day + dt.timedelta(days=1),
                 now.data_day)
        started = time.perf_counter()
        try:
            ctx = load_context(self.cfg, now.data_day)
        except Exception as e:  # load_context is fail-open per piece; this is the warehouse itself failing
            self.loads.labels("failed").inc()
            self._failed("loading the serving context", e)
            return
        self.served = Served(ctx, now, _now(), time.perf_counter() - started)
        self.loads.labels("loaded").inc()
        self.last_error = None
        log.info("serving %s: versions %s, loaded in %.1f s", now.data_day + dt.timedelta(days=1), ctx.versions,
                 self.served.load_seconds)

    def feed(self, user_id: int, n: int | None, strategy: str | None, explain: bool) -> dict[str, Any]:
        """The response of GET /feed/{user_id}."""
        served = self.served  # one context for the whole request
        if served is None:
            raise HTTPException(503, "no serving context loaded yet (see /healthz)")
        ctx = served.ctx
        name = strategy or ctx.cfg.serving.default_strategy
        try:
            length = ctx.cfg.serving.strategy(name).feed_length
        except KeyError as e:
            raise HTTPException(422, f"strategy: {e.args[0]}") from None
        n = length if n is None else n
        if not 1 <= n <= length:
            raise HTTPException(422, f"n: must be between 1 and {length} (the feed length of strategy {name!r}), "
                                f"got {n}")
        try:
            feeds = recommend(ctx, np.array([user_id], dtype=np.int64), name)
        except Exception as e:  # a bug or an artifact gone under the server: this request fails, the server stays
            log.exception("feed of user %d (strategy %s) failed", user_id, name)
            raise HTTPException(500, f"the funnel failed ({type(e).__name__}); see the server log") from e
        for stage, seconds in feeds.seconds.items():
            self.stages.labels(stage).observe(seconds)
        rows = feeds.rows.sort_values("position").head(n)
        out = {"user_id": user_id, "strategy": name, "day": str(ctx.day + dt.timedelta(days=1)),
               "versions": ctx.versions,
               "items": _json_records(rows if explain else rows[[c for c in SUMMARY_COLUMNS if c in rows]])}
        if explain:
            out["funnel"] = _json_records(feeds.funnel.drop(columns="user_id"))[0]
        return out

    def health(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) of GET /healthz: 200 once a context is served, else 503."""
        served = self.served
        body: dict[str, Any] = {
            "status": "starting" if served is None else "degraded" if served.ctx.broken else "ok",
            "latest_data_day": str(self.latest_data_day) if self.latest_data_day else None,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "last_error": self.last_error,
        }
        if served is not None:
            body |= {"day": str(served.ctx.day + dt.timedelta(days=1)), "data_day": str(served.ctx.day),
                     "versions": served.ctx.versions, "broken": served.ctx.broken,
                     "loaded_at": served.loaded_at.isoformat(), "load_seconds": round(served.load_seconds, 3)}
        return (503 if served is None else 200), body


def _field_errors(exc: RequestValidationError) -> str:
    """'user_id: Input should be a valid integer, ... (got 'abc')' for each invalid field."""
    return "; ".join(f"{e['loc'][-1]}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e else "")
                     for e in exc.errors())


def create_app(cfg: PlatformConfig, day: dt.date | None = None) -> FastAPI:
    """The FastAPI app of `recpipe serve`; the first context loads in the background at start-up."""
    server = FeedServer(cfg, day)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        server.stop()

    app = FastAPI(title="recpipe feeds", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(exc)}, status_code=422)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = route.path if route is not None else "unmatched"  # templates, not raw paths: bounded labels
        server.requests.labels(name, str(response.status_code)).inc()
        server.latency.labels(name).observe(time.perf_counter() - started)
        return response

    @app.get("/feed/{user_id}")
    def feed(user_id: Annotated[int, UrlPath(ge=0, le=MAX_USER_ID)],
             n: Annotated[int | None, Query(description="the first n items (1..feed_length)")] = None,
             strategy: Annotated[str | None, Query(description="default: serving.default_strategy")] = None,
             explain: bool = False) -> dict[str, Any]:
        return server.feed(user_id, n, strategy, explain)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        status, body = server.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(server.metrics), media_type=CONTENT_TYPE_LATEST)

    return app
