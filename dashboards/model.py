"""What a dashboard is made of, before it is Grafana JSON: panels with their SQL, a layout
width and height, units and overrides.  ``render`` builds Grafana's JSON of them with
grafana-foundation-sdk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PanelKind = Literal["stat", "timeseries", "table", "barchart"]
# the plugin's two result shapes: a table, or time series (a long frame becomes one series
# per combination of its string columns)
Format = Literal["table", "timeseries"]


@dataclass(frozen=True)
class Override:
    """Field properties for the fields named ``field`` (Grafana's ``byName`` matcher)."""

    field: str
    unit: str | None = None
    display_name: str | None = None
    color: str | None = None
    decimals: int | None = None


@dataclass(frozen=True)
class Panel:
    """One panel and its query.

    ``sql`` may use the ClickHouse plugin's macros (``dashboards.macros``) and
    ``${tenant:singlequote}``; ``min_interval`` is Grafana's panel "Min interval": the
    smallest ``$__interval_s`` the panel asks for, the granularity of the rollup it reads.
    """

    kind: PanelKind
    title: str
    description: str
    sql: str
    format: Format
    unit: str = "short"
    width: int = 12
    height: int = 8
    min_interval: str | None = None
    decimals: int | None = None
    # a series' name, e.g. "${__field.labels.reason}" for one series per reason
    series_name: str | None = None
    overrides: tuple[Override, ...] = ()
    # time series and bar charts: series stacked; time series drawn as bars
    stacked: bool = False
    bars: bool = False
    # bar charts: the column along the category axis
    x_field: str | None = None
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    time_from: str = "now-6h"
    refresh: str = "1m"
    tags: tuple[str, ...] = ("ratewatch",)

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"
