"""Grafana dashboards over the ClickHouse schema in ``analytics/migrations``."""
