"""The ``ratewatch`` command: the one place that wires the components together.

Every option can also come from the environment as ``RATEWATCH_<OPTION>``.  Errors a user
can cause end in a one-line message and exit status 2 (usage) or 1 (everything else).
"""

from __future__ import annotations

import logging
import sys

import click

from ratewatch.cli.analytics import migrate, sql
from ratewatch.cli.dashboards import dashboards
from ratewatch.cli.detect import detect
from ratewatch.cli.keys import keys
from ratewatch.cli.pipeline import pipeline
from ratewatch.cli.serve import serve
from ratewatch.cli.simulate import simulate
from ratewatch.cli.stream import stream
from ratewatch.cli.up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ratewatch")
def main() -> None:
    """RateWatch: rate limiting with analytics and abuse detection."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


main.add_command(serve)
main.add_command(keys)
main.add_command(up)
main.add_command(pipeline)
main.add_command(migrate)
main.add_command(sql)
main.add_command(stream)
main.add_command(detect)
main.add_command(simulate)
main.add_command(dashboards)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
