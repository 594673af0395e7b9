"""The score: labelled subjects against the blocks observed.

A subject counts as blocked at the earliest of: the creation of a listed block that names
any of its identities (``mode`` enforce or shadow: a shadow block "would block"), and the
first answer ``reason: "blocked"`` to one of its checks.  Its time to block is that moment
minus its onset.  A block that names a legitimate subject is a false positive, one that
names only attackers a true positive, one that names no labelled subject (a stuffing
victim's account, an enumerated key) is counted apart.  A block made before an attacker's
onset is not the attacker's: it stopped whoever used that identity legitimately until then
(a leaked key's owner, labelled as a legitimate subject ``until`` the leak), and blocks or
denials after a legitimate subject's ``until`` are the attack's cost, not a false positive.

Recall within the window (60 s) counts only the attackers whose onset lies at least the
window before the end of the run: for later ones the run cannot tell (they are *censored*).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ratewatch.simulate.driver import SeenBlock
from ratewatch.simulate.model import Identity, Subject


@dataclass(frozen=True, slots=True)
class Targets:
    recall: float = 0.95  # of the attackers in each attack scenario, blocked within `window`
    window: float = 60.0
    legit_share: float = 0.005  # at most this share of legitimate subjects ever blocked
    spotless: tuple[str, ...] = ("flash-crowd", "nat")  # scenarios with no legit one blocked


@dataclass(frozen=True, slots=True)
class Outcome:
    """A blocked subject: when (seconds since the start), in which mode, seen how."""

    subject: Subject
    blocked_at: float
    mode: str  # "enforce" | "shadow"
    via: Literal["block", "check"]
    block_id: str | None = None

    @property
    def time_to_block(self) -> float:
        return round(max(0.0, self.blocked_at - self.subject.onset), 3)


@dataclass(frozen=True, slots=True)
class BlockVerdict:
    block: SeenBlock
    matches: Literal["attack", "legit", "none"]
    attack_scenarios: frozenset[str] = frozenset()
    legit_scenarios: frozenset[str] = frozenset()
    subjects: int = 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of sorted ``values``, linearly interpolated."""
    if not values:
        return None
    position = (len(values) - 1) * q
    lo, hi = math.floor(position), math.ceil(position)
    return round(values[lo] + (values[hi] - values[lo]) * (position - lo), 3)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class Stats:
    """One scenario's numbers (or all scenarios', for ``overall``)."""

    name: str
    kind: str  # "legit" | "attack" | "all"
    legit: int = 0
    attack: int = 0
    legit_blocked: int = 0
    attack_blocked: int = 0
    eligible: int = 0  # attackers whose window ends within the run
    attack_blocked_in_window: int = 0  # of the eligible
    shadow: int = 0  # subjects first blocked by a shadow block
    blocks_true: int = 0
    blocks_false: int = 0
    times_to_block: tuple[float, ...] = field(default=())  # sorted, of blocked attackers

    @property
    def subjects(self) -> int:
        return self.legit + self.attack

    @property
    def censored(self) -> int:
        return self.attack - self.eligible

    @property
    def recall_in_window(self) -> float | None:
        return _ratio(self.attack_blocked_in_window, self.eligible)

    @property
    def recall(self) -> float | None:
        """Share of attackers blocked by the end of the run."""
        return _ratio(self.attack_blocked, self.attack)

    @property
    def precision(self) -> float | None:
        return _ratio(self.blocks_true, self.blocks_true + self.blocks_false)

    @property
    def legit_share(self) -> float | None:
        return _ratio(self.legit_blocked, self.legit)

    def time_to_block(self, q: float) -> float | None:
        return percentile(self.times_to_block, q)


@dataclass(frozen=True, slots=True)
class TargetResult:
    name: str
    passed: bool | None  # None: not applicable to this run
    detail: str


@dataclass(frozen=True, slots=True)
class Score:
    end: float
    targets_set: Targets
    scenarios: list[Stats]
    overall: Stats
    outcomes: list[Outcome]  # blocked subjects, earliest first
    blocks: list[BlockVerdict]
    targets: list[TargetResult]

    @property
    def passed(self) -> bool | None:
        """False if a target failed; None if the run cannot tell (too short) or no target
        applies; True if every target passed."""
        results = [target.passed for target in self.targets]
        if False in results:
            return False
        return None if None in results or not results else True


def blocked_subjects(
    subjects: Iterable[Subject],
    denied: Mapping[Identity, float],
    blocks: Iterable[SeenBlock],
) -> tuple[dict[Identity, Outcome], list[BlockVerdict]]:
    """Each blocked subject's first block (by its primary identity), and every block's
    verdict."""
    subjects = list(subjects)
    by_identity: dict[tuple[str, str], list[Subject]] = {}
    for subject in subjects:
        for identity in subject.identities:
            by_identity.setdefault(identity, []).append(subject)
    first: dict[Identity, Outcome] = {}

    def observe(outcome: Outcome) -> None:
        known = first.get(outcome.subject.identity)
        if known is None or outcome.blocked_at < known.blocked_at:
            first[outcome.subject.identity] = outcome

    verdicts = []
    for block in sorted(blocks, key=lambda block: (block.created_at, block.id)):
        named = [
            s
            for s in by_identity.get((block.scope, block.value), [])
            if (s.onset <= block.created_at if s.label == "attack" else block.created_at < s.until)
        ]
        legit = frozenset(s.scenario for s in named if s.label == "legit")
        attack = frozenset(s.scenario for s in named if s.label == "attack")
        matches: Literal["attack", "legit", "none"] = (
            "legit" if legit else "attack" if attack else "none"
        )
        verdicts.append(BlockVerdict(block, matches, attack, legit, len(named)))
        for subject in named:
            observe(Outcome(subject, max(0.0, block.created_at), block.mode, "block", block.id))
    primary = {subject.identity: subject for subject in subjects}
    for identity, at in denied.items():
        if identity in primary and at < primary[identity].until:
            observe(Outcome(primary[identity], at, "enforce", "check"))
    return first, verdicts


def _stats(
    name: str,
    kind: str,
    subjects: Sequence[Subject],
    first: Mapping[Identity, Outcome],
    blocks_true: int,
    blocks_false: int,
    targets: Targets,
    end: float,
) -> Stats:
    legit = [s for s in subjects if s.label == "legit"]
    attack = [s for s in subjects if s.label == "attack"]
    eligible = [s for s in attack if s.onset + targets.window <= end]
    blocked = [first[s.identity] for s in subjects if s.identity in first]
    attack_outcomes = [o for o in blocked if o.subject.label == "attack"]
    return Stats(
        name=name,
        kind=kind,
        legit=len(legit),
        attack=len(attack),
        legit_blocked=sum(1 for o in blocked if o.subject.label == "legit"),
        attack_blocked=len(attack_outcomes),
        eligible=len(eligible),
        attack_blocked_in_window=sum(
            1
            for s in eligible
            if s.identity in first and first[s.identity].time_to_block <= targets.window
        ),
        shadow=sum(1 for o in blocked if o.mode == "shadow"),
        blocks_true=blocks_true,
        blocks_false=blocks_false,
        times_to_block=tuple(sorted(o.time_to_block for o in attack_outcomes)),
    )


def score(
    scenarios: Sequence[tuple[str, str, Sequence[Subject]]],
    denied: Mapping[Identity, float],
    blocks: Iterable[SeenBlock],
    end: float,
    targets: Targets | None = None,
) -> Score:
    """Score a run of ``scenarios`` (name, kind, subjects) that ended ``end`` seconds in."""
    targets = targets or Targets()
    everyone = [subject for _, _, subjects in scenarios for subject in subjects]
    first, verdicts = blocked_subjects(everyone, denied, blocks)
    per_scenario = [
        _stats(
            name,
            kind,
            subjects,
            first,
            sum(1 for v in verdicts if v.matches == "attack" and name in v.attack_scenarios),
            sum(1 for v in verdicts if v.matches == "legit" and name in v.legit_scenarios),
            targets,
            end,
        )
        for name, kind, subjects in scenarios
    ]
    overall = _stats(
        "overall",
        "all",
        everyone,
        first,
        sum(1 for v in verdicts if v.matches == "attack"),
        sum(1 for v in verdicts if v.matches == "legit"),
        targets,
        end,
    )
    outcomes = sorted(first.values(), key=lambda o: (o.blocked_at, o.subject.identity))
    return Score(
        end,
        targets,
        per_scenario,
        overall,
        outcomes,
        verdicts,
        _targets(per_scenario, overall, targets),
    )


def _targets(scenarios: Sequence[Stats], overall: Stats, targets: Targets) -> list[TargetResult]:
    """The targets that apply to the scenarios run; ``passed`` None: the run cannot tell."""
    window = f"{targets.window:g} s"
    results = []
    attacks = [s for s in scenarios if s.attack]
    if attacks:
        name = f"recall within {window} of onset >= {targets.recall:.0%} in every attack scenario"
        measured = [s for s in attacks if s.recall_in_window is not None]
        if not measured:
            detail = f"cannot tell: no attacker's {window} window ended within the run"
            results.append(TargetResult(name, None, detail))
        else:
            low = [s for s in measured if (s.recall_in_window or 0) < targets.recall]
            lowest = min(measured, key=lambda s: s.recall_in_window or 0)
            detail = f"lowest {lowest.recall_in_window:.2f} ({lowest.name})"
            if low:
                detail += "; below: " + ", ".join(s.name for s in low)
            results.append(TargetResult(name, not low, detail))
    if overall.legit_share is not None:
        results.append(
            TargetResult(
                f"legitimate subjects ever blocked <= {targets.legit_share:.1%}",
                overall.legit_share <= targets.legit_share,
                f"{overall.legit_share:.2%} ({overall.legit_blocked} of {overall.legit})",
            )
        )
    for stats in scenarios:
        if stats.name in targets.spotless:
            results.append(
                TargetResult(
                    f"no {stats.name} subject blocked",
                    stats.legit_blocked == 0,
                    f"{stats.legit_blocked} blocked",
                )
            )
    return results
