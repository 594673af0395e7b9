"""Grafana dashboards over the ClickHouse schema in ``analytics/migrations``.

``model`` and ``panels`` say what a dashboard is; ``overview``, ``customers`` and
``security`` are the dashboards (``catalog`` lists them); ``render`` makes Grafana JSON for
the ClickHouse data source plugin; ``provisioning`` writes the files Grafana loads
(``ratewatch dashboards build``) and ``push`` uploads them (``ratewatch dashboards push``).
``macros`` expands a panel's SQL as Grafana and the plugin do, for the tests.
"""
