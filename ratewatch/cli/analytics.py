"""``ratewatch migrate`` and ``ratewatch sql``: the ClickHouse schema, and analysts' queries.

Both default to the embedded chDB in ``<data-dir>/clickhouse``.  chDB can be open in only
one process, so ``sql`` first asks the process that owns it (``ratewatch up``) over its
query socket, and opens chDB itself only when nothing answers there.  The analytics modules
are imported inside the commands: the light install has no ClickHouse libraries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ratewatch.cli.options import SERVER_EXTRA_HINT, data_dir_option, option

if TYPE_CHECKING:
    from analytics.query_client import QueryResult


@contextmanager
def analytics_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a one-line message and exit status 1."""
    try:
        from analytics.errors import AnalyticsError
    except ImportError:  # pragma: no cover - the light install
        raise click.ClickException(SERVER_EXTRA_HINT) from None
    # the drivers log each failed attempt; the exception below tells the user once
    for name in ("clickhouse_connect", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    except ImportError:  # pragma: no cover - the light install
        raise click.ClickException(SERVER_EXTRA_HINT) from None
    except AnalyticsError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None


def clickhouse_url_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return option(
        "--clickhouse-url",
        default=None,
        help="http(s)://user:pass@host:port or chdb:///path [default: chdb in the data dir].",
    )(f)


def resolve_url(data_dir: Path, clickhouse_url: str | None) -> str:
    from analytics.clickhouse import chdb_url

    return clickhouse_url or chdb_url(data_dir / "clickhouse")


@click.command()
@data_dir_option
@clickhouse_url_option
@option(
    "--retention-days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Days of raw decisions (and per-minute rollups) to keep.",
)
def migrate(data_dir: Path, clickhouse_url: str | None, retention_days: int) -> None:
    """Create or upgrade the ClickHouse schema; safe to run again."""
    with analytics_errors():
        from analytics.clickhouse import chdb_path, connect, query_socket_path, redact
        from analytics.errors import AnalyticsError
        from analytics.migrate import migrate as apply_migrations
        from analytics.migrate import retention_params
        from analytics.query_client import answers

        url = resolve_url(data_dir, clickhouse_url)
        path = chdb_path(url)
        if path is not None and answers(query_socket_path(path)):
            raise AnalyticsError(f"chDB at {path} is open in a running RateWatch; stop it first")
        client = connect(url)
        try:
            applied = apply_migrations(client, retention_days)
        finally:
            client.close()
    params = retention_params(retention_days)
    target = redact(url)
    if applied:
        click.echo(f"Applied to {target}: {', '.join(applied)}")
    else:
        click.echo(f"Schema of {target} is up to date.")
    click.echo(
        f"Retention: {params['retention_days']} days raw and per minute, "
        f"{params['hour_retention_days']} per hour, {params['day_retention_days']} per day."
    )


@click.command()
@data_dir_option
@clickhouse_url_option
@click.option(
    "--format",
    "output_format",
    envvar="RATEWATCH_FORMAT",  # what `option` would name it; the parameter avoids `format`
    show_envvar=True,
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: one JSON object per row.",
)
@click.argument("query")
def sql(data_dir: Path, clickhouse_url: str | None, output_format: str, query: str) -> None:
    """Run one read-only QUERY (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN), also while
    `ratewatch up` runs on the data dir."""
    with analytics_errors():
        from analytics.query_client import analyst_query

        result = analyst_query(resolve_url(data_dir, clickhouse_url), query)
    if output_format == "json":
        for row in result.dicts():
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        for line in table_lines(result):
            click.echo(line)
    click.echo(f"({len(result.rows)} row{'' if len(result.rows) == 1 else 's'})", err=True)


def table_lines(result: QueryResult) -> list[str]:
    """The result as an aligned text table: a header, a rule, a line per row."""
    cells = [[_cell(value) for value in row] for row in result.rows]
    widths = [
        max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(result.columns)
    ]
    lines = ["  ".join(name.ljust(w) for name, w in zip(result.columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return [line.rstrip() for line in lines]


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
