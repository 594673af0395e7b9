"""The ``ratewatch`` command: the one place that wires the components together.

Every option can also come from the environment as ``RATEWATCH_<OPTION>``.  Errors a user
can cause end in a one-line message and exit status 2 (usage) or 1 (everything else).
"""

from __future__ import annotations

import logging
import sys
from importlib import import_module

import click

# each command's module is imported when it runs: `ratewatch serve` does not load what
# `simulate` or `sql` need (an HTTP client, the analytics store's client), which would sit
# in every limiter process's memory
COMMANDS = {
    "serve": "ratewatch.cli.serve",
    "keys": "ratewatch.cli.keys",
    "policies": "ratewatch.cli.policies",
    "up": "ratewatch.cli.up",
    "pipeline": "ratewatch.cli.pipeline",
    "migrate": "ratewatch.cli.analytics",
    "sql": "ratewatch.cli.analytics",
    "stream": "ratewatch.cli.stream",
    "detect": "ratewatch.cli.detect",
    "simulate": "ratewatch.cli.simulate",
    "dashboards": "ratewatch.cli.dashboards",
}


class LazyGroup(click.Group):
    """A group whose commands are imported from ``COMMANDS`` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command = getattr(import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ratewatch")
def main() -> None:
    """RateWatch: rate limiting with analytics and abuse detection."""
    from ratewatch.processes.supervisor import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
