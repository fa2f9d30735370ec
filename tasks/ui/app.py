"""The recpipe FastAPI app of the Airflow UI plugin (docs/METHODS.md "Airflow UI plugin"), served by
the Airflow API server under /recpipe (plugins/recpipe_ui.py, through tasks/ui/mount.py).

Login: every route depends on `viewer`, which is Airflow's own `get_user` (the JWT of the
`Authorization: Bearer` header, else of the UI's `_token` session cookie, checked by the configured
auth manager) followed by the auth manager's permission to view the UI (AccessView.WEBSITE), and
for a DAG run's report its permission to read that DAG's runs. Without a valid token a page
redirects to the auth manager's login page and /api/ answers 401; a user without the permission
gets 403. The plugin has no credentials of its own.

Pages: / (overview), /report (the latest nightly report), /report/{stamp or day} (a dated one),
/reports (every dated one), /report/run/{dag_id}/{run_id} (the report of that DAG run's night),
/experiments, /pools, /models, /explorer (the feed explorer form); JSON: /api/feed/{user_id}.

Only the API server imports this module (tasks/ui/mount.py builds the app on its first request);
the feed explorer's module is imported on its first use, as it pulls torch, faiss and skops
(8-22 s, ~450 MB measured on the 2-core test machine) into the API server.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable
from types import ModuleType
from typing import Annotated

import duckdb
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from tasks.core.config import PlatformConfig, get_config
from tasks.ui import pages

TABS = (("", "Overview"), ("report", "Nightly report"), ("reports", "Dated reports"),
        ("experiments", "Experiments"), ("pools", "Pools"), ("models", "Models & gates"),
        ("explorer", "Feed explorer"))
_NAV_STYLE = """
nav.recpipe{display:flex;gap:1rem;flex-wrap:wrap;padding:.6rem 0;border-bottom:1px solid #d0d7de;margin-bottom:1rem;
font-family:system-ui,sans-serif} nav.recpipe a{color:#0969da;text-decoration:none}
nav.recpipe a.active{font-weight:700;color:#1f2328}
"""
_STYLE = _NAV_STYLE + """
body{font-family:system-ui,sans-serif;margin:0 1.5rem 2rem;color:#1f2328}
h1{font-size:1.4rem} h2{font-size:1.15rem;margin-top:1.5rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem;display:block;overflow-x:auto;max-width:100%}
th,td{border-bottom:1px solid #d0d7de;padding:.25rem .5rem;text-align:right} th{background:#f6f8fa}
tr.warn{background:#fff8c5} .warn{background:#fff8c5;padding:.5rem 1rem}
.error{background:#ffebe9;border:1px solid #ff8182;padding:.6rem 1rem;border-radius:.4rem}
.muted{color:#656d76} img{max-width:100%} .columns{display:flex;gap:2rem;align-items:flex-start;flex-wrap:wrap}
#feed{flex:3 1 48rem;min-width:0} #history{flex:2 1 30rem;min-width:0} form.explorer input{font-size:1rem;padding:.3rem}
#feed td:nth-child(3),#feed td:nth-child(5){text-align:left} #feed td:nth-child(6){text-align:left;min-width:20rem}
#history td:first-child{white-space:nowrap} td{vertical-align:top}
"""


def viewer(request: Request, user: GetUserDep) -> BaseUser:
    """The logged-in Airflow user (Airflow's `get_user`: 401 without a token, 403 with an invalid
    one) allowed to view the UI; 403 otherwise."""
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(403, "Forbidden: your Airflow role may not view the UI")
    return user


def _prefix(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _nav(request: Request, active: str) -> str:
    prefix = _prefix(request)
    links = "".join(f"<a href='{prefix}/{path}'{' class=active' if path == active else ''}>{label}</a>"
                    for path, label in TABS)
    return f"<nav class='recpipe'><b>recpipe</b>{links}</nav>"


def page(request: Request, active: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    """`body` in the plugin's page shell: the tab bar, then the title."""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>recpipe — {html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{_nav(request, active)}<h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status)


def with_nav(request: Request, report: str) -> HTMLResponse:
    """A report file as written, with the tab bar at the top of its body."""
    bar = f"<style>{_NAV_STYLE}</style>{_nav(request, 'report')}"
    return HTMLResponse(re.sub(r"(<body[^>]*>)", lambda m: m[1] + bar, report, count=1))


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(f"{_prefix(request)}/api/")


def _error(request: Request, status: int, message: str) -> Response:
    """401 on a page: to the login page (back here after). Otherwise JSON on /api/, else a page."""
    if _is_api(request):
        return JSONResponse({"detail": message}, status_code=status)
    if status == 401:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=here), status_code=303)
    return page(request, "", f"Error {status}", f"<p class='error'>{html.escape(message)}</p>", status)


def _explorer() -> ModuleType:
    from tasks.ui import explorer  # lazy: torch, faiss, skops: 8-22 s, ~450 MB measured (docstring)

    return explorer


def _report_link(request: Request) -> Callable[[str], str]:
    return lambda stamp: f"{_prefix(request)}/report/{stamp}"


def _explorer_form(request: Request, cfg: PlatformConfig, user_id: str | None, strategy: str | None) -> str:
    chosen = strategy or cfg.serving.default_strategy
    options = "".join(f"<option{' selected' if s == chosen else ''}>{html.escape(s)}</option>"
                      for s in cfg.serving.strategies)
    return (f"<form class='explorer' method='get' action='{_prefix(request)}/explorer'>"
            f"<label>User id <input name='user_id' value='{html.escape(user_id or '')}' autofocus></label> "
            f"<label>strategy <select name='strategy'>{options}</select></label> "
            "<button type='submit'>Show feed</button></form>")


def run_report(request: Request, dag_id: str, run_id: str, user: BaseUser) -> HTMLResponse:
    """The report of a DAG run's night (pages.report_of_run), if the user may read the DAG's runs."""
    if not get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=dag_id), user=user):
        raise HTTPException(403, f"Forbidden: your Airflow role may not read the runs of {dag_id}")
    with create_session() as session:
        run = session.execute(select(DagRun.start_date, DagRun.end_date).where(
            DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
    if run is None or run.start_date is None:
        raise HTTPException(404, f"no started run {run_id!r} of DAG {dag_id!r}: no report")
    reports = pages.dated_reports(get_config())
    found = pages.report_of_run(reports, run.start_date, run.end_date, dt.datetime.now(dt.UTC))
    if found is None:
        raise HTTPException(404, f"no report was written during run {run_id!r} of {dag_id!r} nor within a day "
                            f"after it; the dated reports are at {_prefix(request)}/reports")
    return with_nav(request, found.path.read_text(encoding="utf-8"))


def create_app() -> FastAPI:
    """The plugin's app: every route behind `viewer`."""
    app = FastAPI(title="recpipe", dependencies=[Depends(viewer)], docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(request, 422, "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(duckdb.IOException)
    async def warehouse_busy(request: Request, exc: duckdb.IOException) -> Response:
        return _error(request, 503, f"the warehouse cannot be read right now (a task may be writing it): {exc}")

    @app.get("/")
    def overview_route(request: Request) -> HTMLResponse:
        cfg = get_config()
        reports = pages.dated_reports(cfg)
        latest = f"{reports[0].written:%Y-%m-%d %H:%M} UTC" if reports else "none yet"
        experiments = ", ".join(e.name for e in cfg.experiments) or "none configured"
        body = (f"<p>Data root <code>{html.escape(str(cfg.data_root))}</code>. Latest nightly report: {latest} "
                f"({len(reports)} dated). Experiments: {html.escape(experiments)}.</p><ul>"
                + "".join(f"<li><a href='{_prefix(request)}/{p}'>{label}</a></li>" for p, label in TABS[1:])
                + "</ul><p class='muted'>Each DAG run has a <b>Nightly report</b> tab: the report of its night.</p>")
        return page(request, "", "recpipe", body)

    @app.get("/report")
    def report_route(request: Request) -> HTMLResponse:
        path = pages.latest_report(get_config())
        if path is None:
            raise HTTPException(404, "no nightly report yet: the DAGs that write report tables end with write_report")
        return with_nav(request, path.read_text(encoding="utf-8"))

    @app.get("/reports")
    def reports_route(request: Request) -> HTMLResponse:
        body = pages.reports_list(get_config(), _report_link(request))
        return page(request, "reports", "Dated nightly reports", body)

    @app.get("/report/run/{dag_id}/{run_id:path}")
    def run_report_route(request: Request, dag_id: str, run_id: str,
                         user: Annotated[BaseUser, Depends(viewer)]) -> HTMLResponse:
        return run_report(request, dag_id, run_id, user)

    @app.get("/report/{key}")
    def dated_report_route(request: Request, key: str) -> HTMLResponse:
        found = pages.find_report(get_config(), key)
        if found is None:
            raise HTTPException(404, f"no dated report {key!r} (a stamp such as 20260116T021500, or a day "
                                "YYYY-MM-DD for that day's last report)")
        return with_nav(request, found.path.read_text(encoding="utf-8"))

    @app.get("/experiments")
    def experiments_route(request: Request) -> HTMLResponse:
        return page(request, "experiments", "Experiments: A/B readout", pages.experiments_page(get_config()))

    @app.get("/pools")
    def pools_route(request: Request) -> HTMLResponse:
        return page(request, "pools", "Content pools", pages.pools_page(get_config()))

    @app.get("/models")
    def models_route(request: Request) -> HTMLResponse:
        return page(request, "models", "Models and gates", pages.models_page(get_config()))

    @app.get("/explorer")
    def explorer_route(request: Request, user_id: str | None = None, strategy: str | None = None) -> HTMLResponse:
        cfg = get_config()
        form = _explorer_form(request, cfg, user_id, strategy)
        if user_id is None:
            return page(request, "explorer", "Feed explorer", form + "<p class='muted'>Type a user id: the feed "
                        "the recommendation path would serve now, with each item's explanation, and the user's "
                        "recent history beside it.</p>")
        explorer = _explorer()
        try:
            body = explorer.render(explorer.explore(cfg, explorer.parse_user_id(user_id), strategy))
        except explorer.ExplorerError as e:
            return page(request, "explorer", "Feed explorer", form + f"<p class='error'>{html.escape(e.message)}</p>",
                        e.status)
        return page(request, "explorer", "Feed explorer", form + body)

    @app.get("/api/feed/{user_id}")
    def feed_route(user_id: str, strategy: str | None = None) -> JSONResponse:
        explorer = _explorer()
        try:
            found = explorer.explore(get_config(), explorer.parse_user_id(user_id), strategy)
        except explorer.ExplorerError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        return JSONResponse(explorer.as_json(found))

    return app
