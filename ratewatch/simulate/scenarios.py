"""The scenario catalogue, and a simulation: the chosen scenarios over one timeline."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ratewatch.simulate import attacks, legit
from ratewatch.simulate.model import Addresses, Context, Request, Scenario, Subject, Timeline

ScenarioFactory = Callable[[Context], Scenario]

# The order is part of the model: each scenario's index keeps its addresses apart.
SCENARIOS: dict[str, ScenarioFactory] = {
    "steady": legit.steady,
    "diurnal": legit.diurnal,
    "flash-crowd": legit.flash_crowd,
    "nat": legit.nat,
    "credential-stuffing": attacks.credential_stuffing,
    "leaked-key": attacks.leaked_key,
    "scraping": attacks.scraping,
    "burst": attacks.burst,
    "key-enumeration": attacks.key_enumeration,
    "low-and-slow": attacks.low_and_slow,
}


class Simulation:
    """The scenarios of one run; ``tick(k)`` gives the requests of the k-th tick.

    Deterministic: the same names, seed, scale and timeline give the same subjects and the
    same requests, tick by tick; each scenario draws from its own random stream, so choosing
    fewer scenarios does not change the others.
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        seed: int,
        scale: float,
        timeline: Timeline,
        built: Sequence[Scenario] = (),
    ) -> None:
        """``built``: scenarios already planned (a family mix), played after ``names``'."""
        unknown = [name for name in names if name not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario {unknown[0]!r}: one of {', '.join(SCENARIOS)}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, not {scale}")
        self.timeline = timeline
        self.seed = seed
        self.scale = scale
        self.scenarios: list[Scenario] = []
        for index, name in enumerate(SCENARIOS):
            if name in names:
                rng = random.Random(f"ratewatch-simulate:{seed}:{name}")
                context = Context(rng, Addresses(rng, index), scale, timeline)
                self.scenarios.append(SCENARIOS[name](context))
        self.scenarios.extend(built)
        self._next_tick = 0

    @property
    def subjects(self) -> list[Subject]:
        return [subject for scenario in self.scenarios for subject in scenario.subjects()]

    def tick(self, k: int) -> list[Request]:
        """The requests of tick ``k``, which starts ``k × tick`` seconds into the run.
        Ticks must be asked for in order: actors keep state from one to the next."""
        if k != self._next_tick:
            raise ValueError(f"tick {k} asked for, expected tick {self._next_tick}")
        self._next_tick += 1
        t, dt = k * self.timeline.tick, self.timeline.tick
        requests: list[Request] = []
        for scenario in self.scenarios:
            requests.extend(scenario.tick(t, dt))
        return requests
