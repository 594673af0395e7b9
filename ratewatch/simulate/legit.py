"""Legitimate traffic: steady users, a diurnal ramp, a flash crowd, a customer behind a NAT.

Every legitimate subject is a person: a signed-in user (``user_id``; a block of their IP or
of their keys ``user:<id>`` and ``login:<id>`` stops them too) or an anonymous visitor
(``ip``).  They keep one IP and user agent, browse diverse routes at a few requests a
minute, and sign in once when they arrive.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ratewatch.client import Check
from ratewatch.simulate.agents import browser, browsing_route
from ratewatch.simulate.model import (
    ANONYMOUS_LIMIT,
    LOGIN_LIMIT,
    USER_LIMIT,
    Actor,
    Context,
    Poisson,
    Scenario,
    Subject,
    describe,
)

STEADY_USERS = 400
STEADY_ANONYMOUS_SHARE = 0.25
DIURNAL_USERS = 200
DIURNAL_PEAK = 3.0  # the rate at the end of the run, as a multiple of the rate at its start
FLASH_USERS = 400
FLASH_SPREAD = 15.0  # seconds over which the crowd arrives
FLASH_ROUTE = "/drops/spring-launch"
NAT_USERS = 300


@dataclass
class Visitor:
    """A person's browser: one IP and user agent; signs in with its first request."""

    ip: str
    user_agent: str
    user_id: str | None = None
    route: Callable[[random.Random], str] = browsing_route
    signed_in: bool = False

    def __call__(self, rng: random.Random, t: float) -> Check:
        if self.user_id is None:
            limit, window = ANONYMOUS_LIMIT
            return Check(
                key=f"ip:{self.ip}",
                limit=limit,
                window=window,
                ip=self.ip,
                route=self.route(rng),
                user_agent=self.user_agent,
            )
        if not self.signed_in:
            self.signed_in = True
            limit, window = LOGIN_LIMIT
            key, route = f"login:{self.user_id}", "/login"
        else:
            limit, window = USER_LIMIT
            key, route = f"user:{self.user_id}", self.route(rng)
        return Check(
            key=key,
            limit=limit,
            window=window,
            ip=self.ip,
            route=route,
            user_agent=self.user_agent,
            user_id=self.user_id,
        )

    def subject(self, scenario: str, onset: float) -> Subject:
        if self.user_id is None:
            return Subject("ip", self.ip, "legit", scenario, onset)
        return Subject(
            "user_id",
            self.user_id,
            "legit",
            scenario,
            onset,
            aliases=(
                ("ip", self.ip),
                ("key", f"user:{self.user_id}"),
                ("key", f"login:{self.user_id}"),
            ),
        )


def _per_minute(rng: random.Random, low: float, high: float) -> float:
    return rng.uniform(low, high) / 60


def steady(ctx: Context) -> Scenario:
    """Signed-in users and anonymous visitors at 2-8 requests a minute each."""
    rng, actors = ctx.rng, []
    for _ in range(ctx.count(STEADY_USERS)):
        anonymous = rng.random() < STEADY_ANONYMOUS_SHARE
        visitor = Visitor(
            ctx.addresses.ip(), browser(rng), None if anonymous else ctx.addresses.user_id()
        )
        actors.append(
            Actor(visitor.subject("steady", 0.0), Poisson(_per_minute(rng, 2, 8)), visitor)
        )
    return Scenario("steady", "legit", describe(steady), rng, actors)


def diurnal(ctx: Context) -> Scenario:
    """Users whose request rate rises smoothly to three times its start by the end."""
    rng, actors = ctx.rng, []
    duration = ctx.timeline.duration

    def ramp(t: float) -> float:  # 1 at the start, DIURNAL_PEAK at the end, cosine-shaped
        return 1 + (DIURNAL_PEAK - 1) * (1 - math.cos(math.pi * min(t / duration, 1))) / 2

    for _ in range(ctx.count(DIURNAL_USERS)):
        visitor = Visitor(ctx.addresses.ip(), browser(rng), ctx.addresses.user_id())
        actors.append(
            Actor(visitor.subject("diurnal", 0.0), Poisson(_per_minute(rng, 1, 4), ramp), visitor)
        )
    return Scenario("diurnal", "legit", describe(diurnal), rng, actors)


def flash_crowd(ctx: Context) -> Scenario:
    """Many new users arrive within seconds (a product launch), most on one page, each
    browsing normally at 6-15 requests a minute; never seen before the crowd's start."""
    rng, actors = ctx.rng, []
    start = ctx.timeline.flash_at
    spread = min(FLASH_SPREAD, (ctx.timeline.duration - start) / 2)

    def launch_route(rng: random.Random) -> str:
        return FLASH_ROUTE if rng.random() < 0.5 else browsing_route(rng)

    for _ in range(ctx.count(FLASH_USERS)):
        arrival = round(start + rng.uniform(0, spread), 3)
        visitor = Visitor(
            ctx.addresses.ip(), browser(rng, 0.6), ctx.addresses.user_id(), launch_route
        )
        actors.append(
            Actor(
                visitor.subject("flash-crowd", arrival),
                Poisson(_per_minute(rng, 6, 15)),
                visitor,
                start=arrival,
            )
        )
    return Scenario("flash-crowd", "legit", describe(flash_crowd), rng, actors)


_BUSINESS = ("/api/reports", "/api/invoices", "/api/projects", "/dashboard", "/api/team")


def _business_route(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(_BUSINESS) + (f"/{rng.randrange(1, 5000)}" if rng.random() < 0.5 else "")
    return browsing_route(rng)


def nat(ctx: Context) -> Scenario:
    """A big customer: hundreds of users behind one office IP, each with their own account,
    browser and routes, at 2-6 requests a minute (together a heavy IP)."""
    rng, actors = ctx.rng, []
    office_ip = ctx.addresses.ip()
    for _ in range(ctx.count(NAT_USERS)):
        visitor = Visitor(office_ip, browser(rng, 0.1), ctx.addresses.user_id(), _business_route)
        actors.append(Actor(visitor.subject("nat", 0.0), Poisson(_per_minute(rng, 2, 6)), visitor))
    return Scenario("nat", "legit", describe(nat), rng, actors)
