"""What plugins/recpipe_ui.py registers, importable cheaply (docs/METHODS.md "Airflow UI plugin").

Every Airflow process loads the plugins (the scheduler, the dag-processor, the triggerer, each task
runner for its listeners and macros), but only the API server serves the app. So the plugin
registers `LazyApp`, an ASGI app that imports and builds the FastAPI app of tasks/ui/app.py on its
first request (Airflow's API and auth modules, fastapi: ~5 s measured on the loaded 2-core test
machine), and the external views, which need only the configured base URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from airflow.configuration import conf

URL_PREFIX = "/recpipe"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def base_path() -> str:
    """The path the UI is served under (that of `[api] base_url`, as Airflow derives it), no trailing '/'."""
    return urlsplit(conf.get("api", "base_url", fallback="")).path.rstrip("/")


def external_views() -> list[dict[str, Any]]:
    """The plugin's external views: the top-level "recpipe" navigation entry, and the "Nightly
    report" tab of every DAG run (the UI fills in {DAG_ID} and {RUN_ID})."""
    base = base_path() + URL_PREFIX
    return [
        {"name": "recpipe", "href": f"{base}/", "url_route": "recpipe", "destination": "nav",
         "nav_top_level": True},
        {"name": "Nightly report", "href": f"{base}/report/run/{{DAG_ID}}/{{RUN_ID}}",
         "url_route": "recpipe-run-report", "destination": "dag_run"},
    ]


def _build() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    from tasks.ui.app import create_app  # lazy: Airflow's API/auth modules and fastapi, ~5 s measured (docstring)

    return create_app()


class LazyApp:
    """An ASGI app that builds the recpipe app (off the event loop) on its first request, then
    hands every request to it."""

    def __init__(self) -> None:
        self._app: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            async with self._lock:
                if self._app is None:
                    self._app = await asyncio.to_thread(_build)
        await self._app(scope, receive, send)
