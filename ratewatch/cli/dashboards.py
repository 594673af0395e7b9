"""``ratewatch dashboards build`` and ``ratewatch dashboards push``: RateWatch's Grafana
dashboards (``dashboards/``), written as provisioning files or uploaded to a Grafana.

Both need the ``server`` extra: the dashboards are built with grafana-foundation-sdk, which
the light install (the SDK alone) does not carry; without it they say so in one line.  The
package is imported inside the commands, so ``ratewatch --help`` loads none of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ratewatch.cli.options import SERVER_EXTRA_HINT, option


def _needs_the_sdk() -> None:
    """A one-line error, not a traceback, where grafana-foundation-sdk is missing."""
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        raise click.ClickException(SERVER_EXTRA_HINT) from None


@click.group()
def dashboards() -> None:
    """Grafana dashboards over the ClickHouse analytics."""


@dashboards.command()
@option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("compose/grafana"),
    show_default=True,
    help="Directory of the Grafana provisioning (data source, provider, dashboards' JSON).",
)
def build(out: Path) -> None:
    """Write Grafana provisioning: the ClickHouse data source and the dashboards."""
    _needs_the_sdk()
    from dashboards.provisioning import build as build_provisioning

    try:
        written = build_provisioning(out)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out}: {exc.strerror or exc}") from None
    for path in written:
        click.echo(str(path))


@dashboards.command()
@option(
    "--grafana-url",
    required=True,
    help="http(s)://[user:password@]host:3000 (basic auth from the URL, or use a token).",
)
@option(
    "--grafana-token",
    default=None,
    help="A Grafana service account token (Editor role, or Admin with --datasource-url).",
)
@option(
    "--datasource-url",
    default=None,
    help="Also create or update the RateWatch ClickHouse data source, at"
    " http(s)://user:password@host:8123 as Grafana reaches it (use a read-only account).",
)
def push(grafana_url: str, grafana_token: str | None, datasource_url: str | None) -> None:
    """Upload the dashboards to a running Grafana (replacing earlier versions)."""
    _needs_the_sdk()
    from dashboards.errors import DashboardsError
    from dashboards.push import push as push_dashboards

    # httpx logs every request; the outcome is printed once below
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        pushed = push_dashboards(grafana_url, token=grafana_token, datasource_url=datasource_url)
    except DashboardsError as exc:
        raise click.ClickException(str(exc)) from None
    for dashboard in pushed:
        click.echo(f"{dashboard.title}: {dashboard.url}")
