"""A family: ranges of parameters, drawn per seed into an instance, which plans labelled actors.

A *family* is a kind of traffic (credential stuffing spread over many addresses, a customer
behind a carrier-grade NAT, ...) described by the ranges its parameters may take.  ``draw``
picks one value in each range from a seeded random stream: a ``FamilyInstance``.  The
instance's ``plan`` turns those values into a ``Scenario`` of actors, each acting for one
labelled subject, so the same code drives the service (``ratewatch simulate --families``)
and the offline evaluation (``bench/detection_families.py``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

from ratewatch.simulate.families.vocabulary import Vocabulary
from ratewatch.simulate.model import Actor, Addresses, Context, Label, Scenario, describe

Param = float | int | str


@dataclass(frozen=True, slots=True)
class Span:
    """A real parameter in [lo, hi]; ``log``: uniform in its logarithm (rates, scales)."""

    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.lo <= self.hi or (self.log and self.lo <= 0):
            raise ValueError(f"bad range [{self.lo}, {self.hi}] (log={self.log})")

    def draw(self, rng: random.Random) -> float:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        else:
            value = rng.uniform(self.lo, self.hi)
        return min(self.hi, max(self.lo, value))

    def holds(self, value: Param) -> bool:
        return isinstance(value, float | int) and self.lo <= value <= self.hi


@dataclass(frozen=True, slots=True)
class Count:
    """An integer parameter in [lo, hi]; ``log``: small counts as likely as large ones."""

    lo: int
    hi: int
    log: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.lo <= self.hi or (self.log and self.lo < 1):
            raise ValueError(f"bad count range [{self.lo}, {self.hi}] (log={self.log})")

    def draw(self, rng: random.Random) -> int:
        if self.log:
            value = int(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi + 1))))
            return min(self.hi, max(self.lo, value))
        return rng.randint(self.lo, self.hi)

    def holds(self, value: Param) -> bool:
        return isinstance(value, int) and self.lo <= value <= self.hi


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``options``."""

    options: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("a choice needs at least one option")

    def draw(self, rng: random.Random) -> str:
        return rng.choice(self.options)

    def holds(self, value: Param) -> bool:
        return value in self.options


Range = Span | Count | Choice

# The bounds of the issue: no family draws beyond them.
SOURCES = Count(1, 500)
RATE = Span(0.1, 100.0)
ONSET_STAGGER = 60.0  # attack onsets spread over this many seconds after --attack-at


@dataclass
class Stage(Context):
    """What an instance plans with: a ``Context`` plus the seed's route and agent names."""

    vocabulary: Vocabulary = field(default_factory=lambda: Vocabulary(random.Random(0)))

    def onset(self, delay: float) -> float:
        """``delay`` seconds after the attacks' start, kept a window's length before the
        end when the run allows it."""
        timeline = self.timeline
        latest = max(timeline.attack_at, timeline.duration - 60.0)
        return round(min(timeline.attack_at + delay, latest), 3)


class SharedAddresses(Addresses):
    """Addresses and user ids never equal across the families of one mix: one book."""

    def __init__(self, rng: random.Random, ips: set[str], users: set[str]) -> None:
        super().__init__(rng, 0)
        self._ips = ips
        self._users = users


@dataclass(frozen=True)
class Family:
    """Ranges of parameters (the dataclass fields, each a ``Span``, ``Count`` or
    ``Choice``); subclasses name the family and plan its actors from drawn values.

    ``budget`` caps sources × rate (checks/s at scale 1), so that a draw of 500 sources
    at 100 checks/s each does not drown every other family: the rate is lowered (within
    its range) until the product fits.
    """

    name: ClassVar[str]
    label: ClassVar[Label]
    budget: ClassVar[float] = 250.0

    def ranges(self) -> dict[str, Range]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def draw(self, rng: random.Random) -> FamilyInstance:
        params: dict[str, Param] = {name: r.draw(rng) for name, r in self.ranges().items()}
        sources, rate = params.get("sources"), params.get("rate")
        if isinstance(sources, int) and isinstance(rate, float):
            floor = self.ranges()["rate"]
            assert isinstance(floor, Span)
            params["rate"] = max(floor.lo, min(rate, self.budget / sources))
        return FamilyInstance(self, params)

    def actors(self, params: Mapping[str, Param], stage: Stage) -> list[Actor]:
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        return describe(cls)


@dataclass(frozen=True)
class FamilyInstance:
    """A family with one value per parameter."""

    family: Family
    params: Mapping[str, Param]

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def label(self) -> Label:
        return self.family.label

    def plan(self, stage: Stage) -> Scenario:
        actors = self.family.actors(self.params, stage)
        return Scenario(self.name, self.label, self.family.description(), stage.rng, actors)


def integer(params: Mapping[str, Param], name: str, scale: float = 1.0) -> int:
    value = params[name]
    assert isinstance(value, int)
    return max(1, round(value * scale))


def real(params: Mapping[str, Param], name: str) -> float:
    value = params[name]
    assert isinstance(value, float | int)
    return float(value)


def text(params: Mapping[str, Param], name: str) -> str:
    value = params[name]
    assert isinstance(value, str)
    return value
