"""The SQL a panel sends to ClickHouse: its template variables and the ClickHouse data
source plugin's macros expanded, as Grafana and the plugin expand them.

No Grafana runs in the tests, so this is how every panel's SQL is run on chDB.  It follows
the plugin's own expansions (grafana-clickhouse-datasource, ``pkg/macros/macros.go``, the
same from 4.x to today), for the macros the dashboards use:

==============================  ================================================================
``$__timeFilter(col)``          ``col >= toDateTime(<from>) AND col <= toDateTime(<to>)``
``$__fromTime``, ``$__toTime``  ``toDateTime(<from>)``, ``toDateTime(<to>)`` (epoch seconds)
``$__interval_s``               the panel's interval in whole seconds, at least 1
``$__timeInterval(col)``        ``toStartOfInterval(toDateTime(col), INTERVAL <interval_s> second)``
==============================  ================================================================

Template variables are replaced first, in the browser, as Grafana does: ``$name``,
``${name}`` (the value as is) and ``${name:singlequote}`` (quoted, ``'`` escaped as ``\\'``).
Any other macro, format or unknown variable is an error here, so that a panel cannot use
something this expansion (and so its test) does not cover.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::(\w+))?\}|(?!__)(\w+))")
_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")


class MacroError(ValueError):
    """A macro, variable or format that the expansion does not know."""


@dataclass(frozen=True)
class QueryContext:
    """What Grafana sends with a query: the time range (epoch seconds), the panel's
    interval and the dashboard's variables."""

    time_from: int
    time_to: int
    interval_s: int = 60
    variables: Mapping[str, str] = field(default_factory=dict)


def expand(sql: str, context: QueryContext) -> str:
    """``sql`` as ClickHouse receives it from the plugin."""
    return expand_macros(expand_variables(sql, context.variables), context)


def expand_variables(sql: str, variables: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        fmt = match.group(2)
        if name not in variables:
            raise MacroError(f"unknown variable ${name} in {sql!r}")
        value = variables[name]
        if fmt is None:
            return value
        if fmt == "singlequote":
            return "'" + value.replace("'", "\\'") + "'"
        raise MacroError(f"unsupported variable format {fmt!r}")

    return _VARIABLE.sub(replace, sql)


def expand_macros(sql: str, context: QueryContext) -> str:
    interval = max(context.interval_s, 1)
    start, end = f"toDateTime({context.time_from})", f"toDateTime({context.time_to})"

    def column(args: list[str]) -> str:
        if len(args) != 1 or not args[0]:
            raise MacroError(f"expected one column, got {args!r}")
        return args[0]

    macros: dict[str, Callable[[list[str]], str]] = {
        "timeFilter": lambda a: f"{column(a)} >= {start} AND {column(a)} <= {end}",
        "fromTime": lambda a: start,
        "toTime": lambda a: end,
        "interval_s": lambda a: str(interval),
        "timeInterval": lambda a: (
            f"toStartOfInterval(toDateTime({column(a)}), INTERVAL {interval} second)"
        ),
    }

    def replace(match: re.Match[str]) -> str:
        name, raw_args = match.group(1), match.group(2)
        if name not in macros:
            raise MacroError(f"unsupported macro $__{name}")
        args = [arg.strip() for arg in raw_args.split(",")] if raw_args is not None else []
        return macros[name](args)

    return _MACRO.sub(replace, sql)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(interval: str) -> int:
    """Seconds of a Grafana interval such as ``1m`` or ``1h``."""
    match = re.fullmatch(r"(\d+)([smhd])", interval)
    if match is None:
        raise MacroError(f"interval {interval!r} is not like 30s, 1m, 1h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]
