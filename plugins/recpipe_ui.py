"""recpipe's Airflow UI plugin (Airflow 3.1+; docs/METHODS.md "Airflow UI plugin"): the FastAPI app
of tasks/ui/app.py served by the API server under /recpipe (built on its first request, see
tasks/ui/mount.py), the "recpipe" navigation entry and the "Nightly report" tab of every DAG run.
Airflow finds this file in its plugins folder (AIRFLOW__CORE__PLUGINS_FOLDER, set by the Makefile,
tasks/orchestration/local_airflow.py, the Dockerfile and docker-compose.yml)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tasks.ui.mount import URL_PREFIX, LazyApp, external_views


class RecpipeUIPlugin(AirflowPlugin):
    """The recpipe pages inside the Airflow UI, behind its login."""

    name = "recpipe"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "recpipe"}]  # noqa: RUF012
    external_views = external_views()
