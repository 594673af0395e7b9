"""RateWatch's dashboards, in the order Grafana lists them."""

from __future__ import annotations

from dashboards.customers import CUSTOMERS
from dashboards.model import Dashboard
from dashboards.overview import OVERVIEW
from dashboards.security import SECURITY

DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, CUSTOMERS, SECURITY)
