"""Panel constructors with the defaults of each kind: a stat is a small single number, a
time series reads its rollup's granularity, a table or bar chart reads a table result."""

from __future__ import annotations

from dashboards.model import Override, Panel


def stat(
    title: str,
    description: str,
    sql: str,
    *,
    unit: str = "short",
    decimals: int | None = None,
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "blue"),),
    width: int = 4,
) -> Panel:
    return Panel(
        kind="stat",
        title=title,
        description=description,
        sql=sql,
        format="table",
        unit=unit,
        decimals=decimals,
        thresholds=thresholds,
        width=width,
        height=4,
    )


def timeseries(
    title: str,
    description: str,
    sql: str,
    *,
    min_interval: str,
    unit: str = "short",
    stacked: bool = False,
    bars: bool = False,
    series_by: str | None = None,
    overrides: tuple[Override, ...] = (),
    width: int = 12,
    decimals: int | None = None,
) -> Panel:
    """``series_by``: the string column of a long result that names its series."""
    return Panel(
        kind="timeseries",
        title=title,
        description=description,
        sql=sql,
        format="timeseries",
        unit=unit,
        min_interval=min_interval,
        overrides=overrides,
        stacked=stacked,
        bars=bars,
        width=width,
        height=9,
        decimals=decimals,
        series_name=f"${{__field.labels.{series_by}}}" if series_by else None,
    )


def table(
    title: str,
    description: str,
    sql: str,
    *,
    overrides: tuple[Override, ...] = (),
    width: int = 12,
    height: int = 10,
) -> Panel:
    return Panel(
        kind="table",
        title=title,
        description=description,
        sql=sql,
        format="table",
        overrides=overrides,
        width=width,
        height=height,
    )


def barchart(
    title: str,
    description: str,
    sql: str,
    *,
    x_field: str,
    unit: str = "short",
    stacked: bool = False,
    overrides: tuple[Override, ...] = (),
    width: int = 12,
) -> Panel:
    return Panel(
        kind="barchart",
        title=title,
        description=description,
        sql=sql,
        format="table",
        unit=unit,
        overrides=overrides,
        x_field=x_field,
        stacked=stacked,
        width=width,
        height=9,
    )
