"""Legitimate families: what must never be blocked, with randomized parameters.

People are subjects by ``user_id`` (a block of their address or their key stops them too:
aliases), so a block of an office's or a carrier's shared address counts against every
person behind it.  Machines (a partner's servers, probes, batch jobs) are subjects by their
key or address.
"""

# The ranges are frozen dataclasses: immutable, safe as shared field defaults.
# ruff: noqa: RUF009

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from ratewatch.client import Check
from ratewatch.simulate.families.base import (
    Count,
    Family,
    Param,
    Span,
    Stage,
    integer,
    real,
)
from ratewatch.simulate.model import (
    ANONYMOUS_LIMIT,
    PARTNER_KEY_LIMIT,
    USER_LIMIT,
    Actor,
    Poisson,
    Regular,
    Subject,
)


def _people(
    stage: Stage,
    family: str,
    ips: list[str],
    users: int,
    rate_per_minute: float,
    *,
    start: float = 0.0,
    arrival: float = 0.0,
    end: float = math.inf,
    route: str | None = None,
) -> list[Actor]:
    """``users`` signed-in people spread over ``ips``, each at a Poisson rate around
    ``rate_per_minute`` (lognormal across people), arriving within ``arrival`` seconds of
    ``start``; a share of their requests go to ``route`` if given."""
    rng, vocabulary = stage.rng, stage.vocabulary
    limit, window = USER_LIMIT
    actors = []
    for _ in range(users):
        ip, user = rng.choice(ips), stage.addresses.user_id()
        agent = vocabulary.browser(rng)
        begin = round(start + rng.uniform(0, arrival), 3)
        subject = Subject(
            "user_id", user, "legit", family, begin, aliases=(("ip", ip), ("key", f"user:{user}"))
        )

        def browse(
            rng: random.Random, t: float, ip: str = ip, user: str = user, agent: str = agent
        ) -> Check:
            page = route if route is not None and rng.random() < 0.5 else vocabulary.browse(rng)
            return Check(
                key=f"user:{user}",
                limit=limit,
                window=window,
                ip=ip,
                route=page,
                user_agent=agent,
                user_id=user,
            )

        rate = rate_per_minute * rng.lognormvariate(0, 0.6) / 60
        actors.append(Actor(subject, Poisson(rate), browse, start=begin, end=end))
    return actors


@dataclass(frozen=True)
class Steady(Family):
    """People browsing at a few requests a minute, each from an address of their own."""

    name = "steady"
    label = "legit"
    users: Count = Count(50, 400, log=True)
    rate_per_minute: Span = Span(1.0, 12.0, log=True)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        users = integer(params, "users", stage.scale)
        ips = [stage.addresses.ip() for _ in range(users)]
        actors = []
        for ip in ips:
            actors += _people(stage, self.name, [ip], 1, real(params, "rate_per_minute"))
        return actors


@dataclass(frozen=True)
class NatOffice(Family):
    """An office: tens of people behind one to a few addresses, all day."""

    name = "nat-office"
    label = "legit"
    users: Count = Count(10, 200, log=True)
    addresses: Count = Count(1, 4)
    rate_per_minute: Span = Span(2.0, 15.0, log=True)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        ips = [stage.addresses.ip() for _ in range(integer(params, "addresses"))]
        users = integer(params, "users", stage.scale)
        return _people(stage, self.name, ips, users, real(params, "rate_per_minute"))


@dataclass(frozen=True)
class CarrierNat(NatOffice):
    """A mobile carrier's NAT: hundreds of accounts behind a few addresses."""

    name = "carrier-nat"
    users: Count = Count(100, 500, log=True)
    addresses: Count = Count(2, 8)
    rate_per_minute: Span = Span(1.0, 8.0, log=True)


@dataclass(frozen=True)
class FlashCrowd(Family):
    """A launch: many new people arrive within seconds, most on the launch page."""

    name = "flash-crowd"
    label = "legit"
    users: Count = Count(50, 500, log=True)
    arrival: Span = Span(5.0, 60.0)
    onset: Span = Span(0.0, 60.0)
    rate_per_minute: Span = Span(3.0, 20.0, log=True)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        actors = []
        start = stage.onset(real(params, "onset"))
        for _ in range(integer(params, "users", stage.scale)):
            actors += _people(
                stage,
                self.name,
                [stage.addresses.ip()],
                1,
                real(params, "rate_per_minute"),
                start=start,
                arrival=real(params, "arrival"),
                route=stage.vocabulary.launch,
            )
        return actors


@dataclass(frozen=True)
class Partner(Family):
    """A partner's servers calling their own endpoints with their API key, steadily and
    fast: few addresses, one key, few routes, a tool's user agent."""

    name = "partner"
    label = "legit"
    sources: Count = Count(1, 5)
    rate: Span = Span(1.0, 30.0, log=True)
    endpoints: Count = Count(1, 3)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        rng, vocabulary = stage.rng, stage.vocabulary
        key = "key:" + "".join(rng.choices("0123456789abcdef", k=24))
        routes = [
            f"{vocabulary.partner}/{rng.randrange(10**4)}"
            for _ in range(integer(params, "endpoints"))
        ]
        agent = vocabulary.tool(rng)
        limit, window = PARTNER_KEY_LIMIT
        ips = [stage.addresses.ip() for _ in range(integer(params, "sources"))]
        subject = Subject(
            "key", key, "legit", self.name, 0.0, aliases=tuple(("ip", ip) for ip in ips)
        )
        actors = []
        for ip in ips:

            def call(rng: random.Random, t: float, ip: str = ip) -> Check:
                return Check(
                    key=key,
                    limit=limit,
                    window=window,
                    ip=ip,
                    route=rng.choice(routes),
                    user_agent=agent,
                )

            actors.append(Actor(subject, Poisson(real(params, "rate") / len(ips)), call))
        return actors


@dataclass(frozen=True)
class Probes(Family):
    """Monitoring probes: a health route every few seconds, like clockwork, from a few
    addresses in different places."""

    name = "monitoring"
    label = "legit"
    sources: Count = Count(1, 10)
    interval: Span = Span(1.0, 30.0, log=True)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        rng, vocabulary = stage.rng, stage.vocabulary
        agent = vocabulary.tool(rng)
        limit, window = ANONYMOUS_LIMIT
        actors = []
        for _ in range(integer(params, "sources")):
            ip = stage.addresses.ip()

            def probe(rng: random.Random, t: float, ip: str = ip) -> Check:
                return Check(
                    key=f"ip:{ip}",
                    limit=limit,
                    window=window,
                    ip=ip,
                    route=vocabulary.health,
                    user_agent=agent,
                )

            subject = Subject("ip", ip, "legit", self.name, 0.0, aliases=(("key", f"ip:{ip}"),))
            actors.append(
                Actor(
                    subject,
                    Regular(real(params, "interval"), jitter=0.02, phase=rng.random()),
                    probe,
                )
            )
        return actors


@dataclass(frozen=True)
class BatchJob(Family):
    """A batch or sync job: quiet, then bursts of tens of calls a second for a while with
    its key, from one or two servers; it may run over its limit and be denied."""

    name = "batch-job"
    label = "legit"
    sources: Count = Count(1, 2)
    rate: Span = Span(5.0, 100.0, log=True)
    burst: Span = Span(5.0, 30.0)
    every: Span = Span(30.0, 120.0)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        rng, vocabulary = stage.rng, stage.vocabulary
        key = "key:" + "".join(rng.choices("0123456789abcdef", k=24))
        agent = vocabulary.tool(rng)
        limit, window = PARTNER_KEY_LIMIT
        burst, every = real(params, "burst"), real(params, "every")
        phase = rng.uniform(0, every)
        ips = [stage.addresses.ip() for _ in range(integer(params, "sources"))]
        subject = Subject(
            "key", key, "legit", self.name, 0.0, aliases=tuple(("ip", ip) for ip in ips)
        )
        routes = vocabulary.api

        def shape(t: float) -> float:
            return 1.0 if (t + phase) % every < burst else 0.0

        actors = []
        for ip in ips:

            def sync(rng: random.Random, t: float, ip: str = ip) -> Check:
                return Check(
                    key=key,
                    limit=limit,
                    window=window,
                    ip=ip,
                    route=rng.choice(routes),
                    user_agent=agent,
                )

            actors.append(Actor(subject, Poisson(real(params, "rate") / len(ips), shape), sync))
        return actors


@dataclass(frozen=True)
class Retrying(Family):
    """Clients that go over their limit and retry after the 429 (the retry counted too):
    well-behaved, much denied, at a steady pace a little above their limit."""

    name = "retrying-client"
    label = "legit"
    sources: Count = Count(1, 20, log=True)
    overshoot: Span = Span(1.0, 3.0)  # their pace as a multiple of their limit
    limit: Count = Count(10, 120)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        rng, vocabulary = stage.rng, stage.vocabulary
        limit = integer(params, "limit")
        actors = []
        for _ in range(integer(params, "sources", stage.scale)):
            ip, user, agent = stage.addresses.ip(), stage.addresses.user_id(), vocabulary.tool(rng)
            route = rng.choice(vocabulary.api)

            def call(
                rng: random.Random,
                t: float,
                ip: str = ip,
                user: str = user,
                agent: str = agent,
                route: str = route,
            ) -> Check:
                return Check(
                    key=f"user:{user}",
                    limit=limit,
                    window=60,
                    ip=ip,
                    route=route,
                    user_agent=agent,
                    user_id=user,
                )

            subject = Subject(
                "user_id",
                user,
                "legit",
                self.name,
                0.0,
                aliases=(("ip", ip), ("key", f"user:{user}")),
            )
            rate = limit * real(params, "overshoot") / 60
            actors.append(Actor(subject, Poisson(rate), call))
        return actors


LEGIT: tuple[Family, ...] = (
    Steady(),
    NatOffice(),
    CarrierNat(),
    FlashCrowd(),
    Partner(),
    Probes(),
    BatchJob(),
    Retrying(),
)
