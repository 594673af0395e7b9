"""``ratewatch simulate``: labelled synthetic traffic with attacks against a running service,
scored against the blocks it drew.  A client: it needs only the light install."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import click
import httpx

from ratewatch.cli.options import option
from ratewatch.simulate import SCENARIOS, Simulation, Timeline
from ratewatch.simulate.driver import Driver, Observations
from ratewatch.simulate.errors import SimulationError
from ratewatch.simulate.families import FAMILIES, draw_mix
from ratewatch.simulate.report import RunInfo, render, to_json
from ratewatch.simulate.scorer import score

HTTP_TIMEOUT = 10.0


@click.command()
@option("--url", default="http://127.0.0.1:8080", show_default=True, help="The RateWatch API.")
@click.option(
    "--api-key",
    envvar=["RATEWATCH_API_KEY", "RATEWATCH_BOOTSTRAP_KEY"],
    show_envvar=True,
    help="An API key of the tenant to simulate in (admin not needed).",
)
@option(
    "--duration",
    type=click.FloatRange(1, 24 * 3600),
    default=180.0,
    show_default=True,
    help="Seconds to run.",
)
@option(
    "--attack-at",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds into the run when the attacks start.",
)
@option(
    "--scenario",
    type=click.Choice(list(SCENARIOS)),
    multiple=True,
    help="Run only these scenarios (repeat the option); default: all.",
)
@option(
    "--families",
    is_flag=True,
    help="Play families with parameters drawn from --seed (sources, rates, names, onsets) "
    "instead of the fixed scenarios.",
)
@option(
    "--family",
    type=click.Choice(list(FAMILIES)),
    multiple=True,
    help="With --families: only these families (repeat the option); default: all.",
)
@option(
    "--scale",
    type=click.FloatRange(0, 20, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiplies the number of users and attacking sources.",
)
@option("--seed", type=int, default=1, show_default=True, help="Same seed, same traffic.")
@click.option(
    "--json",
    "as_json",
    envvar="RATEWATCH_JSON",
    show_envvar=True,
    is_flag=True,
    help="Print the report as JSON.",
)
def simulate(
    url: str,
    api_key: str | None,
    duration: float,
    attack_at: float,
    scenario: tuple[str, ...],
    families: bool,
    family: tuple[str, ...],
    scale: float,
    seed: int,
    as_json: bool,
) -> None:
    """Send labelled traffic with attacks; report precision, recall and time to block.

    Legitimate scenarios: steady, diurnal, flash-crowd, nat.  Attacks, from --attack-at:
    credential-stuffing, leaked-key, scraping, burst, key-enumeration, low-and-slow.

    With --families, every family of attacks and legitimate traffic is drawn with random
    parameters from --seed instead (docs/detection.md lists them), attacks staggered over
    the minute after --attack-at.
    """
    if not api_key:
        raise click.UsageError("no API key: pass --api-key or set RATEWATCH_API_KEY")
    if attack_at >= duration:
        raise click.UsageError(
            f"--attack-at ({attack_at:g}) must be earlier than --duration ({duration:g})"
        )
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url {url!r} is not an http:// or https:// URL")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    if family and not families:
        raise click.UsageError("--family needs --families")
    if families and scenario:
        raise click.UsageError("--scenario and --families exclude each other")
    timeline = Timeline(duration, attack_at)
    if families:
        names = tuple(dict.fromkeys(family)) or tuple(FAMILIES)
        mix = draw_mix(seed, timeline=timeline, scale=scale, names=names)
        simulation = mix.simulation(scale=scale, timeline=timeline)
    else:
        names = tuple(dict.fromkeys(scenario)) or tuple(SCENARIOS)
        simulation = Simulation(names, seed=seed, scale=scale, timeline=timeline)
    try:
        observations = asyncio.run(_drive(simulation, url, api_key))
    except SimulationError as exc:
        raise click.ClickException(str(exc)) from None
    result = score(
        [(s.name, s.kind, s.subjects()) for s in simulation.scenarios],
        observations.denied,
        observations.blocks.values(),
        end=timeline.duration,
    )
    info = RunInfo(url, seed, scale, timeline, names)
    if as_json:
        click.echo(json.dumps(to_json(result, info, observations), indent=2))
    else:
        click.echo(render(result, info, observations))


async def _drive(simulation: Simulation, url: str, api_key: str) -> Observations:
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": "ratewatch-simulate"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=HTTP_TIMEOUT) as client:
        with click.progressbar(
            length=simulation.timeline.ticks,
            label="simulating",
            file=sys.stderr,
            show_eta=True,
        ) as bar:
            return await Driver(simulation, client, on_tick=lambda: bar.update(1)).run()
