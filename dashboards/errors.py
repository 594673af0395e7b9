"""The errors of building and pushing dashboards; each message is one line for the CLI."""

from __future__ import annotations


class DashboardsError(Exception):
    """Base class."""


class GrafanaError(DashboardsError):
    """Grafana could not be reached, or refused a request."""
