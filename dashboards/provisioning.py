"""Grafana provisioning for the compose stack: the ClickHouse data source, a file provider
and the dashboards' JSON, as ``ratewatch dashboards build`` writes them.

Layout under the output directory (``compose/grafana`` by default), mounted by the
``grafana`` service of ``compose/docker-compose.yml``::

    provisioning/datasources/clickhouse.yaml   -> /etc/grafana/provisioning/datasources/
    provisioning/dashboards/ratewatch.yaml     -> /etc/grafana/provisioning/dashboards/
    dashboards/<uid>.json                      -> /var/lib/grafana/dashboards/ratewatch/

The data source logs in as the ClickHouse account ``grafana`` (compose/clickhouse/users.d/
grafana.xml: read-only, every tenant); Grafana reads its password from the environment
variable named below when it loads the file, so no secret is written here.
"""

from __future__ import annotations

import json
from pathlib import Path

from analytics.tables import DATABASE
from dashboards.catalog import DASHBOARDS
from dashboards.render import DATASOURCE_NAME, DATASOURCE_TYPE, DATASOURCE_UID, render, to_json

DATASOURCE_FILE = Path("provisioning/datasources/clickhouse.yaml")
PROVIDER_FILE = Path("provisioning/dashboards/ratewatch.yaml")
DASHBOARDS_DIR = Path("dashboards")
# where the grafana service mounts DASHBOARDS_DIR
CONTAINER_DASHBOARDS_DIR = "/var/lib/grafana/dashboards/ratewatch"
FOLDER_UID = "ratewatch"
FOLDER_TITLE = "RateWatch"
# the compose service and the read-only account Grafana queries as
CLICKHOUSE_HOST = "clickhouse"
CLICKHOUSE_NATIVE_PORT = 9000
CLICKHOUSE_USER = "grafana"
PASSWORD_VARIABLE = "RATEWATCH_GRAFANA_DB_PASSWORD"
QUERY_TIMEOUT_SECONDS = 60

_HEADER = "# Written by `ratewatch dashboards build`; edit dashboards/ and build again.\n"


def _yaml_scalar(value: object) -> str:
    # JSON strings and numbers are YAML scalars: no YAML library needed
    return json.dumps(value)


def datasource_yaml() -> str:
    json_data = {
        "host": CLICKHOUSE_HOST,
        "port": CLICKHOUSE_NATIVE_PORT,
        "protocol": "native",
        "secure": False,
        "username": CLICKHOUSE_USER,
        "defaultDatabase": DATABASE,
        "queryTimeout": str(QUERY_TIMEOUT_SECONDS),
    }
    lines = [
        "apiVersion: 1",
        "datasources:",
        f"  - name: {_yaml_scalar(DATASOURCE_NAME)}",
        f"    uid: {_yaml_scalar(DATASOURCE_UID)}",
        f"    type: {_yaml_scalar(DATASOURCE_TYPE)}",
        "    access: proxy",
        "    isDefault: true",
        "    editable: false",
        "    jsonData:",
        *(f"      {key}: {_yaml_scalar(value)}" for key, value in sorted(json_data.items())),
        "    secureJsonData:",
        "      # read from the environment of the Grafana container",
        f"      password: ${PASSWORD_VARIABLE}",
    ]
    return _HEADER + "\n".join(lines) + "\n"


def provider_yaml() -> str:
    lines = [
        "apiVersion: 1",
        "providers:",
        f"  - name: {_yaml_scalar(FOLDER_TITLE)}",
        f"    folder: {_yaml_scalar(FOLDER_TITLE)}",
        f"    folderUid: {_yaml_scalar(FOLDER_UID)}",
        "    type: file",
        "    disableDeletion: true",
        "    allowUiUpdates: false",
        "    updateIntervalSeconds: 60",
        "    options:",
        f"      path: {_yaml_scalar(CONTAINER_DASHBOARDS_DIR)}",
    ]
    return _HEADER + "\n".join(lines) + "\n"


def built_files() -> dict[Path, str]:
    """Every file of the build, by its path under the output directory."""
    files = {DATASOURCE_FILE: datasource_yaml(), PROVIDER_FILE: provider_yaml()}
    for dashboard in DASHBOARDS:
        files[DASHBOARDS_DIR / dashboard.file_name] = to_json(render(dashboard))
    return files


def build(out: Path) -> list[Path]:
    """Write the provisioning under ``out``; returns the files written.  Earlier builds'
    dashboards that no longer exist are removed (only ours: ``ratewatch-*.json``)."""
    files = built_files()
    for stale in sorted((out / DASHBOARDS_DIR).glob("ratewatch-*.json")):
        if stale.relative_to(out) not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
