"""The traffic model's building blocks: labelled subjects, actors and their arrival processes.

A scenario is a list of *actors*.  An actor is one source of requests (a user's browser, an
attacker's IP for a while) with an arrival process and a behaviour that shapes each request
into a check.  Every actor acts on behalf of one labelled *subject*: the thing a detector
should (attack) or should never (legit) block, named by a block scope and value, plus the
other identities whose block would stop it too (a user's IP and keys).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from ratewatch.client import Check

Scope = Literal["ip", "key", "user_id"]
Label = Literal["legit", "attack"]
Identity = tuple[Scope, str]

TICK_SECONDS = 0.5
USER_LIMIT = (100, 60)  # per-user API limit: 100 requests a minute
LOGIN_LIMIT = (5, 60)  # login attempts per account
ANONYMOUS_LIMIT = (60, 60)  # per-IP limit of anonymous traffic
PARTNER_KEY_LIMIT = (1000, 60)  # an integration's API key


def describe(factory: Callable[..., object]) -> str:
    """A scenario factory's docstring on one line: the scenario's description."""
    return " ".join((factory.__doc__ or "").split())


@dataclass(frozen=True, slots=True)
class Timeline:
    """When things happen in a run, in seconds from its start."""

    duration: float
    attack_at: float
    tick: float = TICK_SECONDS

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ValueError(f"duration must be positive, not {self.duration}")
        if not 0 <= self.attack_at < self.duration:
            raise ValueError(
                f"the attacks' start ({self.attack_at:g} s) must lie within "
                f"the run's duration ({self.duration:g} s)"
            )

    @property
    def flash_at(self) -> float:
        """The flash crowd arrives a quarter of the way from the attacks' start to the end,
        while the attacks go on: the hard case for a detector."""
        return self.attack_at + (self.duration - self.attack_at) / 4

    @property
    def ticks(self) -> int:
        return math.ceil(self.duration / self.tick)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a scenario labels: ``scope``/``value`` name it as a block would; a block of any
    of its ``aliases`` stops it too.  ``onset``: when it starts to act as labelled.
    ``until``: when it stops being judged, because what stops it from then on is another
    subject's due block (a leaked key's owner, once the key is abused)."""

    scope: Scope
    value: str
    label: Label
    scenario: str
    onset: float
    aliases: tuple[Identity, ...] = ()
    until: float = math.inf

    @property
    def identity(self) -> Identity:
        return (self.scope, self.value)

    @property
    def identities(self) -> tuple[Identity, ...]:
        return (self.identity, *self.aliases)


class Request(NamedTuple):
    subject: Subject
    check: Check


class Arrivals(Protocol):
    def count(self, rng: random.Random, start: float, end: float) -> int:
        """How many requests arrive in [start, end); called for consecutive intervals."""
        ...


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    threshold, k, product = math.exp(-mean), 0, rng.random()
    while product > threshold:
        k += 1
        product *= rng.random()
    return k


@dataclass
class Poisson:
    """Independent arrivals at ``rate`` per second, times ``shape(t)`` if given."""

    rate: float
    shape: Callable[[float], float] | None = None

    def count(self, rng: random.Random, start: float, end: float) -> int:
        factor = self.shape((start + end) / 2) if self.shape is not None else 1.0
        return poisson(rng, self.rate * factor * (end - start))


@dataclass
class Regular:
    """Machine-like arrivals every ``interval`` seconds (± ``jitter`` as a share of it),
    the first ``phase`` intervals after the actor starts."""

    interval: float
    jitter: float = 0.0
    phase: float = 0.0
    _next: float | None = field(default=None, repr=False)

    def count(self, rng: random.Random, start: float, end: float) -> int:
        if self._next is None:
            self._next = start + self.phase * self.interval
        n = 0
        while self._next < end:
            n += 1
            self._next += self.interval * (1 + self.jitter * (2 * rng.random() - 1))
        return n


Behaviour = Callable[[random.Random, float], Check]


@dataclass(eq=False)
class Actor:
    subject: Subject
    arrivals: Arrivals
    behaviour: Behaviour
    start: float = 0.0
    end: float = math.inf

    def requests(self, rng: random.Random, t: float, dt: float) -> list[Request]:
        lo, hi = max(t, self.start), min(t + dt, self.end)
        if lo >= hi:
            return []
        return [
            Request(self.subject, self.behaviour(rng, t))
            for _ in range(self.arrivals.count(rng, lo, hi))
        ]


@dataclass
class Scenario:
    name: str
    kind: Label
    description: str
    rng: random.Random
    actors: list[Actor]

    def subjects(self) -> list[Subject]:
        """Each subject once, in the order its actors were made."""
        seen: dict[Identity, Subject] = {}
        for actor in self.actors:
            seen.setdefault(actor.subject.identity, actor.subject)
        return list(seen.values())

    def tick(self, t: float, dt: float) -> list[Request]:
        requests: list[Request] = []
        for actor in self.actors:
            requests.extend(actor.requests(self.rng, t, dt))
        return requests


# Public first octets, so that addresses look like real clients' (no private ranges).
_FIRST_OCTETS = (
    *range(2, 10),
    *range(12, 100),
    *range(101, 127),
    *range(128, 169),
    *range(170, 172),
    *range(173, 192),
    *range(193, 224),
)


class Addresses:
    """Random client IPs and user ids, never equal across scenarios: each scenario's
    ``index`` is in the low bits of the second octet and of the user id."""

    def __init__(self, rng: random.Random, index: int):
        if not 0 <= index < 16:
            raise ValueError("at most 16 scenarios")
        self._rng = rng
        self._index = index
        self._ips: set[str] = set()
        self._users: set[str] = set()

    def ip(self) -> str:
        while True:
            rng = self._rng
            second = rng.randrange(16) * 16 + self._index
            address = (
                f"{rng.choice(_FIRST_OCTETS)}.{second}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            )
            if address not in self._ips:
                self._ips.add(address)
                return address

    def user_id(self) -> str:
        while True:
            user = str(self._rng.randrange(10**7 // 16, 10**8 // 16) * 16 + self._index)
            if user not in self._users:
                self._users.add(user)
                return user


@dataclass
class Context:
    """What a scenario factory gets: its own random stream, addresses and the run's shape."""

    rng: random.Random
    addresses: Addresses
    scale: float
    timeline: Timeline

    def count(self, n: int) -> int:
        """``n`` scaled by --scale, at least one."""
        return max(1, round(n * self.scale))
