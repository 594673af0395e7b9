"""Attack families.  Each source is a subject (``ip``, with the per-address key as an
alias); a leaked key's subject is the key.  Victims (tried accounts, enumerated ids, cards)
are not subjects: blocking them is neither right nor wrong for the attack."""

# The ranges are frozen dataclasses: immutable, safe as shared field defaults.
# ruff: noqa: RUF009

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ratewatch.client import Check
from ratewatch.simulate.attack_checks import (
    anonymous_check,
    catalogue_walk,
    key_owner,
    limited_check,
    partner_key_calls,
    stuffing_list,
)
from ratewatch.simulate.families.base import (
    Choice,
    Count,
    Family,
    Param,
    Span,
    Stage,
    integer,
    real,
    text,
)
from ratewatch.simulate.model import (
    LOGIN_LIMIT,
    USER_LIMIT,
    Actor,
    Poisson,
    Regular,
    Subject,
)

CREDENTIAL_IN = Choice(("key", "user_id"))


def _arrivals(rate: float, regular: str, rng: random.Random) -> Poisson | Regular:
    if regular == "regular":
        return Regular(1 / rate, jitter=0.1, phase=rng.random())
    return Poisson(rate)


def _source(ip: str, family: str, onset: float) -> Subject:
    return Subject("ip", ip, "attack", family, onset, aliases=(("key", f"ip:{ip}"),))


def _credential_check(
    ip: str, route: str, agent: str, account: str, where: str, limit: tuple[int, int]
) -> Check:
    """A check carrying a tried credential: in the key (``<route>:<account>``, limited per
    account) or in ``user_id`` with the address's own key."""
    if where == "key":
        return limited_check(f"{route}:{account}", limit, ip=ip, route=route, user_agent=agent)
    return anonymous_check(ip, route, agent, user_id=account)


@dataclass(frozen=True)
class _Sources(Family):
    """Many sources, each its own address, rotating user agents, staggered onsets; each
    request made by ``request``."""

    sources: Count = Count(1, 500, log=True)
    rate: Span = Span(0.1, 100.0, log=True)
    agents: Count = Count(1, 20, log=True)
    tools: Choice = Choice(("browser", "tool"))
    arrivals: Choice = Choice(("poisson", "regular"))
    onset: Span = Span(0.0, 30.0)
    spread: Span = Span(0.0, 30.0)  # seconds over which the sources join

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        rng, vocabulary = stage.rng, stage.vocabulary
        agents = vocabulary.agents(rng, integer(params, "agents"), tools=params["tools"] == "tool")
        begin = real(params, "onset")
        request = self.requests(params, stage)
        actors = []
        for _ in range(integer(params, "sources", stage.scale)):
            ip = stage.addresses.ip()
            start = stage.onset(begin + rng.uniform(0, real(params, "spread")))
            agent = rng.choice(agents)
            rotate = len(agents) > 1 and rng.random() < 0.5

            def behave(
                rng: random.Random,
                t: float,
                ip: str = ip,
                agent: str = agent,
                rotate: bool = rotate,
            ) -> Check:
                return request(rng, ip, rng.choice(agents) if rotate else agent)

            actors.append(
                Actor(
                    _source(ip, self.name, start),
                    _arrivals(real(params, "rate"), text(params, "arrivals"), rng),
                    behave,
                    start=start,
                    end=start + real(params, "duration") if "duration" in params else math.inf,
                )
            )
        return actors

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        raise NotImplementedError


@dataclass(frozen=True)
class CredentialStuffing(_Sources):
    """Login attempts over a list of accounts from a few fast addresses, each account tried
    a few times; the tried credential in ``key`` or in ``user_id``."""

    name = "stuffing-concentrated"
    label = "attack"
    sources: Count = Count(1, 20, log=True)
    rate: Span = Span(1.0, 100.0, log=True)
    tries: Count = Count(1, 8)
    credential_in: Choice = CREDENTIAL_IN

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        accounts = stuffing_list(stage.addresses, integer(params, "tries"))
        where, route = text(params, "credential_in"), stage.vocabulary.login

        def attempt(rng: random.Random, ip: str, agent: str) -> Check:
            return _credential_check(ip, route, agent, next(accounts), where, LOGIN_LIMIT)

        return attempt


@dataclass(frozen=True)
class DistributedStuffing(CredentialStuffing):
    """Credential stuffing spread over tens to hundreds of addresses, each below one
    attempt a second: no single address stands out by its rate."""

    name = "stuffing-distributed"
    sources: Count = Count(20, 500, log=True)
    rate: Span = Span(0.1, 1.0, log=True)


@dataclass(frozen=True)
class CredentialChecking(_Sources):
    """Stolen API keys tried to see which still work: each request a different valid key,
    answered allowed, at a modest rate per address."""

    name = "credential-checking"
    label = "attack"
    sources: Count = Count(1, 100, log=True)
    rate: Span = Span(0.2, 20.0, log=True)

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        route = stage.vocabulary.account

        def check(rng: random.Random, ip: str, agent: str) -> Check:
            account = stage.addresses.user_id()
            return limited_check(
                f"user:{account}", USER_LIMIT, ip=ip, route=route, user_agent=agent
            )

        return check


@dataclass(frozen=True)
class Enumeration(_Sources):
    """Identifiers tried in sequence (or at random) in ``key`` or ``user_id``: almost all
    of them new, many unknown."""

    name = "enumeration"
    label = "attack"
    sources: Count = Count(1, 30, log=True)
    rate: Span = Span(0.5, 50.0, log=True)
    order: Choice = Choice(("sequential", "random"))
    credential_in: Choice = CREDENTIAL_IN

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        numbers = itertools.count(stage.rng.randrange(10**6, 9 * 10**6))
        sequential = params["order"] == "sequential"
        where, route = text(params, "credential_in"), stage.vocabulary.account

        def probe(rng: random.Random, ip: str, agent: str) -> Check:
            n = next(numbers) if sequential else rng.randrange(10**6, 10**8)
            return _credential_check(ip, route, agent, str(n), where, USER_LIMIT)

        return probe


@dataclass(frozen=True)
class FastScraping(_Sources):
    """A crawler walking the catalogue page by page from a few addresses, fast."""

    name = "scraping-fast"
    label = "attack"
    sources: Count = Count(1, 10, log=True)
    rate: Span = Span(2.0, 100.0, log=True)

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        pages = catalogue_walk(stage.vocabulary.catalogue)

        def fetch(rng: random.Random, ip: str, agent: str) -> Check:
            return anonymous_check(ip, next(pages), agent)

        return fetch


@dataclass(frozen=True)
class SlowScraping(FastScraping):
    """The same crawl spread over many addresses, each slower than a browsing person."""

    name = "scraping-distributed"
    sources: Count = Count(10, 500, log=True)
    rate: Span = Span(0.1, 2.0, log=True)


@dataclass(frozen=True)
class Carding(_Sources):
    """Stolen card numbers tried on the checkout route, from a few accounts the attacker
    signed up (``user_id``), most attempts declined."""

    name = "carding"
    label = "attack"
    sources: Count = Count(1, 50, log=True)
    rate: Span = Span(0.1, 10.0, log=True)

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        accounts = [stage.addresses.user_id() for _ in range(max(1, stage.rng.randint(1, 5)))]
        route = stage.vocabulary.checkout

        def pay(rng: random.Random, ip: str, agent: str) -> Check:
            account = rng.choice(accounts)
            return limited_check(
                f"{route}:{account}",
                LOGIN_LIMIT,
                ip=ip,
                route=route,
                user_agent=agent,
                user_id=account,
            )

        return pay


@dataclass(frozen=True)
class BruteForce(_Sources):
    """Many passwords tried on one account, from one or a few addresses."""

    name = "brute-force"
    label = "attack"
    sources: Count = Count(1, 20, log=True)
    rate: Span = Span(0.2, 30.0, log=True)
    credential_in: Choice = CREDENTIAL_IN

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        victim = stage.addresses.user_id()
        where, route = text(params, "credential_in"), stage.vocabulary.login

        def attempt(rng: random.Random, ip: str, agent: str) -> Check:
            return _credential_check(ip, route, agent, victim, where, LOGIN_LIMIT)

        return attempt


@dataclass(frozen=True)
class Burst(_Sources):
    """One address firing as fast as it can for a while."""

    name = "single-source-burst"
    label = "attack"
    sources: Count = Count(1, 1)
    rate: Span = Span(10.0, 100.0, log=True)
    duration: Span = Span(10.0, 90.0)

    def requests(
        self, params: Mapping[str, Param], stage: Stage
    ) -> Callable[[random.Random, str, str], Check]:
        pages = stage.vocabulary.pages + stage.vocabulary.api

        def hit(rng: random.Random, ip: str, agent: str) -> Check:
            return anonymous_check(ip, rng.choice(pages), agent)

        return hit


@dataclass(frozen=True)
class LeakedKey(Family):
    """A partner's API key, used by its owner from its servers, leaks and is used from
    many addresses; the key is the subject, the owner legitimate until the leak."""

    name = "leaked-key"
    label = "attack"
    sources: Count = Count(1, 500, log=True)
    rate: Span = Span(0.1, 20.0, log=True)
    owner_rate: Span = Span(0.2, 10.0, log=True)
    onset: Span = Span(0.0, 30.0)
    tools: Choice = Choice(("browser", "tool"))

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        rng, vocabulary = stage.rng, stage.vocabulary
        key = "key:" + "".join(rng.choices("0123456789abcdef", k=24))
        onset = stage.onset(real(params, "onset"))
        routes = vocabulary.api
        owner_ip = stage.addresses.ip()
        actors = [
            Actor(
                key_owner(key, owner_ip, self.name, onset),
                Poisson(real(params, "owner_rate")),
                partner_key_calls(key, owner_ip, vocabulary.tool(rng), routes),
            )
        ]
        subject = Subject("key", key, "attack", self.name, onset)
        tools = params["tools"] == "tool"
        for _ in range(integer(params, "sources", stage.scale)):
            agent = vocabulary.tool(rng) if tools else vocabulary.browser(rng)
            actors.append(
                Actor(
                    subject,
                    Poisson(real(params, "rate")),
                    partner_key_calls(key, stage.addresses.ip(), agent, routes),
                    start=onset + rng.uniform(0, 10),
                )
            )
        return actors


ATTACKS: tuple[Family, ...] = (
    CredentialStuffing(),
    DistributedStuffing(),
    CredentialChecking(),
    Enumeration(),
    FastScraping(),
    SlowScraping(),
    Carding(),
    LeakedKey(),
    Burst(),
    BruteForce(),
)
