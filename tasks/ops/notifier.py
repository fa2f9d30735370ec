"""The Airflow notifier of recpipe: every DAG's failure callback, routed through tasks.ops.alerts.

One alert per failure: it runs when a task has failed for good (Airflow calls it after the last
try, never on a retry); it stays silent for a task failed by a data-quality rejection
(`DataQualityRejected`: its gate has raised the failure's alert) and for a DAG run failed by its
tasks (reason task_failure: each failed task has raised its own alert)."""

from __future__ import annotations

from typing import Any

import jinja2.sandbox
from airflow.sdk import BaseNotifier

from tasks.ops.alerts import Alert, DataQualityRejected, raise_alert


def _source(context: dict[str, Any]) -> str:
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", "?")
    task_id = getattr(ti, "task_id", None)
    return f"{dag_id}.{task_id}" if task_id else str(dag_id)


class RecpipeNotifier(BaseNotifier):
    """Turns a failed task or DAG run into a recpipe alert (alerts log, log line, webhooks)."""

    template_fields = ("title",)

    def __init__(self, title: str = "Airflow task failed", severity: str = "critical"):
        super().__init__()
        self.title = title
        self.severity = severity

    def render_template_fields(self, context: Any, jinja_env: jinja2.Environment | None = None) -> None:
        """Render the title; a DAG-level callback run by `airflow dags test` gets a SerializedDAG,
        which has no template environment of its own, so a sandboxed one stands in."""
        if jinja_env is None and not hasattr(context.get("dag"), "get_template_env"):
            jinja_env = jinja2.sandbox.SandboxedEnvironment()
        super().render_template_fields(context, jinja_env)

    def notify(self, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), DataQualityRejected):
            return  # the gate's data-quality alert is this failure's alert
        if context.get("reason") == "task_failure":
            return  # a DAG run failed by its tasks, which have alerted
        ti = context.get("ti") or context.get("task_instance")
        details: dict[str, Any] = {
            "run_id": context.get("run_id") or getattr(context.get("dag_run"), "run_id", None),
            "logical_date": str(context.get("logical_date")),
            "try_number": getattr(ti, "try_number", None),
        }
        if context.get("exception") is not None:
            details["error"] = f"{type(context['exception']).__name__}: {context['exception']}"
        if context.get("reason"):
            details["reason"] = context["reason"]
        links = {"log": ti.log_url} if getattr(ti, "log_url", None) else {}
        raise_alert(
            Alert(
                kind="task_failure",
                severity=self.severity,  # type: ignore[arg-type]
                title=self.title,
                source=_source(context),
                details={k: v for k, v in details.items() if v is not None},
                links=links,
            )
        )
