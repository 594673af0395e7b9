"""Dashboards as Grafana dashboard JSON for the ClickHouse data source plugin.

Every panel and the ``tenant`` variable query the data source chosen by the dashboard's
``datasource`` variable (any ``grafana-clickhouse-datasource``, the provisioned RateWatch
one by default), so the same JSON works in the compose stack and in an existing Grafana.
Targets are the plugin's SQL-editor queries: ``editorType: "sql"``, ``rawSql``, and
``format`` / ``queryType`` (0 / ``timeseries`` or 1 / ``table``).  Panels are laid out in
order, left to right on Grafana's 24-column grid.  The JSON is written with sorted keys,
so a build that changes nothing changes no file.
"""

from __future__ import annotations

import json
from typing import Any

from dashboards.model import Dashboard, Override, Panel
from dashboards.sql import TENANT_VARIABLE, TENANTS_QUERY

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_UID = "ratewatch-clickhouse"
DATASOURCE_NAME = "RateWatch ClickHouse"
# the plugin version the targets are written for (4.x's query model) and compose installs
PLUGIN_VERSION = "4.9.0"
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = {"type": DATASOURCE_TYPE, "uid": "${datasource}"}
SCHEMA_VERSION = 39
GRID_COLUMNS = 24
TAG = "ratewatch"

_FORMATS = {"timeseries": 0, "table": 1}
_REFRESH_INTERVALS = ["30s", "1m", "5m", "15m", "30m", "1h"]


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of ``dashboard`` (without ``id``: Grafana assigns it)."""
    positions = layout(dashboard.panels)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "editable": True,
        "graphTooltip": 1,  # a shared crosshair
        "timezone": "utc",  # the rollups' buckets are UTC
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": dashboard.time_from, "to": "now"},
        "refresh": dashboard.refresh,
        "timepicker": {"refresh_intervals": _REFRESH_INTERVALS},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [
            {
                "title": "RateWatch",
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {"list": [_BUILTIN_ANNOTATIONS]},
        "templating": {"list": [datasource_variable(), tenant_variable()]},
        "panels": [
            render_panel(panel, number, position)
            for number, (panel, position) in enumerate(
                zip(dashboard.panels, positions, strict=True), 1
            )
        ],
    }


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def datasource_variable() -> dict[str, Any]:
    return {
        "name": DATASOURCE_VARIABLE,
        "label": "ClickHouse",
        "type": "datasource",
        "query": DATASOURCE_TYPE,
        "current": {"selected": False, "text": DATASOURCE_NAME, "value": DATASOURCE_UID},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def tenant_variable() -> dict[str, Any]:
    return {
        "name": TENANT_VARIABLE,
        "label": "Tenant",
        "description": "Every panel shows this tenant's data only.",
        "type": "query",
        "datasource": DATASOURCE,
        "query": TENANTS_QUERY,
        "definition": TENANTS_QUERY,
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,  # on dashboard load
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Grid positions: left to right, a new row when a panel does not fit."""
    positions = []
    x = y = row_height = 0
    for panel in panels:
        if not 0 < panel.width <= GRID_COLUMNS:
            raise ValueError(f"panel {panel.title!r} is {panel.width} columns wide")
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"x": x, "y": y, "w": panel.width, "h": panel.height})
        x += panel.width
        row_height = max(row_height, panel.height)
    return positions


def render_panel(panel: Panel, number: int, position: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "color": {"mode": "thresholds" if panel.kind in ("stat", "table") else "palette-classic"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in panel.thresholds],
        },
        "mappings": [],
        "custom": {**_CUSTOM[panel.kind], **panel.custom},
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.series_name is not None:
        defaults["displayName"] = panel.series_name
    rendered: dict[str, Any] = {
        "id": number,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": position,
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorType": "sql",
                "format": _FORMATS[panel.format],
                "queryType": panel.format,
                "rawSql": panel.sql,
                "pluginVersion": PLUGIN_VERSION,
            }
        ],
        "fieldConfig": {
            "defaults": defaults,
            "overrides": [_override(o) for o in panel.overrides],
        },
        "options": {**_OPTIONS[panel.kind], **panel.options},
    }
    if panel.min_interval is not None:
        rendered["interval"] = panel.min_interval
    return rendered


def _override(override: Override) -> dict[str, Any]:
    properties: list[dict[str, Any]] = []
    if override.display_name is not None:
        properties.append({"id": "displayName", "value": override.display_name})
    if override.unit is not None:
        properties.append({"id": "unit", "value": override.unit})
    if override.decimals is not None:
        properties.append({"id": "decimals", "value": override.decimals})
    if override.color is not None:
        properties.append({"id": "color", "value": {"fixedColor": override.color, "mode": "fixed"}})
    return {"matcher": {"id": "byName", "options": override.field}, "properties": properties}


_BUILTIN_ANNOTATIONS = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}
_LEGEND = {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True}
_TOOLTIP = {"mode": "multi", "sort": "desc"}
_OPTIONS: dict[str, dict[str, Any]] = {
    "stat": {
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": "auto",
        "wideLayout": True,
    },
    "timeseries": {"legend": _LEGEND, "tooltip": _TOOLTIP},
    "table": {
        "cellHeight": "sm",
        "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
        "showHeader": True,
    },
    "barchart": {
        "barWidth": 0.8,
        "groupWidth": 0.7,
        "legend": _LEGEND,
        "orientation": "horizontal",
        "showValue": "auto",
        "tooltip": _TOOLTIP,
        "xTickLabelRotation": 0,
    },
}
_CUSTOM: dict[str, dict[str, Any]] = {
    "stat": {},
    "timeseries": {
        "axisPlacement": "auto",
        "drawStyle": "line",
        "fillOpacity": 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
    },
    "table": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
    "barchart": {"fillOpacity": 80, "lineWidth": 1},
}
