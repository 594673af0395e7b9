"""Dashboards as Grafana dashboard JSON, built with grafana-foundation-sdk.

The SDK's builders are generated from Grafana's own schemas (the build pinned in
pyproject matches the Grafana version compose runs), so what they build is a dashboard
that Grafana's model accepts, field by field.  Every panel and the ``tenant`` variable
query the data source chosen by the dashboard's ``datasource`` variable (any
``grafana-clickhouse-datasource``, the provisioned RateWatch one by default), so the same
JSON works in the compose stack and in an existing Grafana.  Targets are the plugin's
SQL-editor queries (``dashboards.clickhouse_query``).  Panels are laid out in order, left
to right on Grafana's 24-column grid.  The JSON is written with sorted keys, so a build
that changes nothing changes no file.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    FieldColorModeId,
    GridPos,
    Threshold,
    ThresholdsMode,
    VariableHide,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from dashboards.clickhouse_query import (
    DATASOURCE_TYPE,
    PLUGIN_VERSION,
    ClickHouseQueryBuilder,
)
from dashboards.model import Dashboard, Override, Panel
from dashboards.sql import TENANT_VARIABLE, TENANTS_QUERY

__all__ = [
    "DATASOURCE",
    "DATASOURCE_NAME",
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "PLUGIN_VERSION",
    "layout",
    "render",
    "to_json",
]

DATASOURCE_UID = "ratewatch-clickhouse"
DATASOURCE_NAME = "RateWatch ClickHouse"
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = {"type": DATASOURCE_TYPE, "uid": "${datasource}"}
GRID_COLUMNS = 24
TAG = "ratewatch"

_REFRESH_INTERVALS = ["30s", "1m", "5m", "15m", "30m", "1h"]

AnyPanel = stat.Panel | timeseries.Panel | table.Panel | barchart.Panel


def _datasource() -> DataSourceRef:
    return DataSourceRef(type_val=DATASOURCE_TYPE, uid="${datasource}")


def build(dashboard: Dashboard) -> builders.Dashboard:
    """The SDK's builder of ``dashboard``."""
    built = (
        builders.Dashboard(dashboard.title)
        .uid(dashboard.uid)
        .description(dashboard.description)
        .tags(list(dashboard.tags))
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)  # a shared crosshair
        .timezone("utc")  # the rollups' buckets are UTC
        .time(dashboard.time_from, "now")
        .refresh(dashboard.refresh)
        .timepicker(builders.TimePicker().refresh_intervals(_REFRESH_INTERVALS))
        .fiscal_year_start_month(0)
        .live_now(False)
        .week_start("")
        .link(
            builders.DashboardLink("RateWatch")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
            .icon("external link")
            .target_blank(False)
            .tooltip("")
            .url("")
        )
        .annotation(
            builders.AnnotationQuery()
            .built_in(1)
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .name("Annotations & Alerts")
            .type("dashboard")
        )
        .with_variable(datasource_variable())
        .with_variable(tenant_variable())
    )
    positions = layout(dashboard.panels)
    for number, (panel, position) in enumerate(zip(dashboard.panels, positions, strict=True), 1):
        built = built.with_panel(build_panel(panel, number, position))
    return built


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of ``dashboard`` (without ``id``: Grafana assigns it)."""
    document: dict[str, Any] = json.loads(json.dumps(build(dashboard).build(), cls=JSONEncoder))
    return document


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def datasource_variable() -> builders.DatasourceVariable:
    return (
        builders.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("ClickHouse")
        .type(DATASOURCE_TYPE)
        .current(VariableOption(selected=False, text=DATASOURCE_NAME, value=DATASOURCE_UID))
        .hide(VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
    )


def tenant_variable() -> builders.QueryVariable:
    return (
        builders.QueryVariable(TENANT_VARIABLE)
        .label("Tenant")
        .description("Every panel shows this tenant's data only.")
        .datasource(_datasource())
        .query(TENANTS_QUERY)
        .hide(VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .regex("")
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def layout(panels: tuple[Panel, ...]) -> list[GridPos]:
    """Grid positions: left to right, a new row when a panel does not fit."""
    positions = []
    x = y = row_height = 0
    for panel in panels:
        if not 0 < panel.width <= GRID_COLUMNS:
            raise ValueError(f"panel {panel.title!r} is {panel.width} columns wide")
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        positions.append(GridPos(h=panel.height, w=panel.width, x=x, y=y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return positions


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .calcs([])
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def _tooltip() -> common_builders.VizTooltipOptions:
    return (
        common_builders.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.MULTI)
        .sort(common.SortOrder.DESCENDING)
    )


def _of_kind(panel: Panel) -> AnyPanel:
    """The typed builder of the panel's kind, with its kind's options."""
    if panel.kind == "stat":
        return (
            stat.Panel()
            .color_mode(common.BigValueColorMode.VALUE)
            .graph_mode(common.BigValueGraphMode.NONE)
            .justify_mode(common.BigValueJustifyMode.AUTO)
            .orientation(common.VizOrientation.AUTO)
            .reduce_options(
                common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
            )
            .show_percent_change(False)
            .text_mode(common.BigValueTextMode.AUTO)
            .wide_layout(True)
        )
    if panel.kind == "timeseries":
        return (
            timeseries.Panel()
            .legend(_legend())
            .tooltip(_tooltip())
            .axis_placement(common.AxisPlacement.AUTO)
            .draw_style(common.GraphDrawStyle.BARS if panel.bars else common.GraphDrawStyle.LINE)
            .fill_opacity(80 if panel.bars else 30 if panel.stacked else 10)
            .line_width(1)
            .show_points(common.VisibilityMode.NEVER)
            .span_nulls(False)
            .stacking(
                common_builders.StackingConfig()
                .group("A")
                .mode(common.StackingMode.NORMAL if panel.stacked else common.StackingMode.NONE)
            )
        )
    if panel.kind == "table":
        return (
            table.Panel()
            .cell_height(common.TableCellHeight.SM)
            .footer(
                common_builders.TableFooterOptions()
                .count_rows(False)
                .fields([])  # the schema's list (a string here was accepted, not typed)
                .reducer(["sum"])
                .show(False)
            )
            .show_header(True)
            .align(common.FieldTextAlignment.AUTO)
            .cell_options(common.TableAutoCellOptions())
            .inspect(False)
        )
    if panel.x_field is None:
        raise ValueError(f"bar chart {panel.title!r} names no x field")
    return (
        barchart.Panel()
        .bar_width(0.8)
        .group_width(0.7)
        .legend(_legend())
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_value(common.VisibilityMode.AUTO)
        .stacking(common.StackingMode.NORMAL if panel.stacked else common.StackingMode.NONE)
        .tooltip(_tooltip())
        .x_tick_label_rotation(0)
        .x_field(panel.x_field)
        .fill_opacity(80)
        .line_width(1)
    )


def build_panel(panel: Panel, number: int, position: GridPos) -> AnyPanel:
    built = (
        _of_kind(panel)
        .id(number)
        .title(panel.title)
        .description(panel.description)
        .datasource(_datasource())
        .grid_pos(position)
        .with_target(ClickHouseQueryBuilder(panel.sql, panel.format).datasource(_datasource()))
        .unit(panel.unit)
        .color_scheme(
            builders.FieldColor().mode(
                FieldColorModeId.THRESHOLDS
                if panel.kind in ("stat", "table")
                else FieldColorModeId.PALETTE_CLASSIC
            )
        )
        .thresholds(
            builders.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=value, color=color) for value, color in panel.thresholds])
        )
        .mappings([])
    )
    if panel.decimals is not None:
        built = built.decimals(panel.decimals)
    if panel.series_name is not None:
        built = built.display_name(panel.series_name)
    if panel.min_interval is not None:
        built = built.interval(panel.min_interval)
    for override in panel.overrides:
        built = built.override_by_name(override.field, _properties(override))
    return built


def _properties(override: Override) -> list[DynamicConfigValue]:
    properties: list[DynamicConfigValue] = []
    if override.display_name is not None:
        properties.append(DynamicConfigValue("displayName", override.display_name))
    if override.unit is not None:
        properties.append(DynamicConfigValue("unit", override.unit))
    if override.decimals is not None:
        properties.append(DynamicConfigValue("decimals", override.decimals))
    if override.color is not None:
        properties.append(
            DynamicConfigValue("color", {"fixedColor": override.color, "mode": "fixed"})
        )
    return properties
