"""A mix: every family drawn once from a seed, planned on one timeline."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ratewatch.simulate.families.attacks import ATTACKS
from ratewatch.simulate.families.base import Family, FamilyInstance, SharedAddresses, Stage
from ratewatch.simulate.families.legit import LEGIT
from ratewatch.simulate.families.vocabulary import Vocabulary
from ratewatch.simulate.model import Scenario, Timeline
from ratewatch.simulate.scenarios import Simulation

FAMILIES: dict[str, Family] = {family.name: family for family in (*LEGIT, *ATTACKS)}


@dataclass(frozen=True)
class Mix:
    """The families of one seed, with their drawn parameters and their planned scenarios."""

    seed: int
    instances: tuple[FamilyInstance, ...]
    scenarios: tuple[Scenario, ...]

    def simulation(self, *, scale: float, timeline: Timeline) -> Simulation:
        return Simulation((), seed=self.seed, scale=scale, timeline=timeline, built=self.scenarios)


def draw_mix(
    seed: int, *, timeline: Timeline, scale: float = 1.0, names: Sequence[str] = ()
) -> Mix:
    """Each family of ``names`` (default: all) drawn and planned from ``seed``.

    Deterministic per seed; each family draws from its own random stream, so choosing fewer
    families leaves the others' draws unchanged.  The route and user-agent names come from
    the seed too: one vocabulary for the whole mix, as one application has one set of
    routes.
    """
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown family {unknown[0]!r}: one of {', '.join(FAMILIES)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, not {scale}")
    vocabulary = Vocabulary(random.Random(f"ratewatch-families:{seed}:vocabulary"))
    ips: set[str] = set()
    users: set[str] = set()
    instances, scenarios = [], []
    for name, family in FAMILIES.items():
        if names and name not in names:
            continue
        instance = family.draw(random.Random(f"ratewatch-families:{seed}:{name}:draw"))
        rng = random.Random(f"ratewatch-families:{seed}:{name}:plan")
        stage = Stage(rng, SharedAddresses(rng, ips, users), scale, timeline, vocabulary)
        instances.append(instance)
        scenarios.append(instance.plan(stage))
    return Mix(seed, tuple(instances), tuple(scenarios))
