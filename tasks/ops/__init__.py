"""Alerts: the alert log, the task-failure notifier, alert pages."""
