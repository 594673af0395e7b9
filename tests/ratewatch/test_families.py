"""Traffic families: parameters drawn within their ranges, labels, determinism, the
``--families`` option, and a short run of the offline evaluation harness."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import detection_families
from ratewatch.cli import main
from ratewatch.simulate import agents
from ratewatch.simulate.families import FAMILIES, Mix, draw_mix
from ratewatch.simulate.families.base import RATE, SOURCES, Count, Span
from ratewatch.simulate.families.vocabulary import Vocabulary
from ratewatch.simulate.model import Request, Timeline
from tests.support.servers import RatewatchProcess
from tests.support.simulate_runs import simulating

pytestmark = pytest.mark.timeout(90)

TIMELINE = Timeline(duration=150, attack_at=40)
ATTACK_FAMILIES = {
    "stuffing-concentrated",
    "stuffing-distributed",
    "credential-checking",
    "enumeration",
    "scraping-fast",
    "scraping-distributed",
    "carding",
    "leaked-key",
    "single-source-burst",
    "brute-force",
}
LEGIT_FAMILIES = {
    "steady",
    "nat-office",
    "carrier-nat",
    "flash-crowd",
    "partner",
    "monitoring",
    "batch-job",
    "retrying-client",
}


def test_the_catalogue_holds_the_issue_s_families() -> None:
    assert set(FAMILIES) == ATTACK_FAMILIES | LEGIT_FAMILIES
    assert {n for n, f in FAMILIES.items() if f.label == "attack"} == ATTACK_FAMILIES


def test_every_family_s_ranges_lie_within_the_issue_s_bounds() -> None:
    for family in FAMILIES.values():
        ranges = family.ranges()
        if "sources" in ranges:
            sources = ranges["sources"]
            assert isinstance(sources, Count)
            assert SOURCES.lo <= sources.lo <= sources.hi <= SOURCES.hi, family.name
        if "rate" in ranges:
            rate = ranges["rate"]
            assert isinstance(rate, Span)
            assert RATE.lo <= rate.lo <= rate.hi <= RATE.hi, family.name
    # between them, the attack families span the whole of both bounds
    attacks = [f.ranges() for f in FAMILIES.values() if f.label == "attack"]
    assert min(r["sources"].lo for r in attacks) == SOURCES.lo  # type: ignore[union-attr]
    assert max(r["sources"].hi for r in attacks) == SOURCES.hi  # type: ignore[union-attr]
    assert min(r["rate"].lo for r in attacks) == RATE.lo  # type: ignore[union-attr]
    assert max(r["rate"].hi for r in attacks) == RATE.hi  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_drawn_parameters_lie_within_their_ranges(seed: int) -> None:
    for name, family in FAMILIES.items():
        instance = family.draw(random.Random(seed))
        ranges = family.ranges()
        assert set(instance.params) == set(ranges), name
        for parameter, value in instance.params.items():
            assert ranges[parameter].holds(value), (name, parameter, value)
        if "sources" in instance.params and "rate" in instance.params:
            # the budget lowers the rate, never below its range
            sources, rate = instance.params["sources"], instance.params["rate"]
            assert isinstance(sources, int)
            assert isinstance(rate, float)
            rate_range = ranges["rate"]
            assert isinstance(rate_range, Span)
            assert sources * rate <= family.budget + 1e-9 or rate == rate_range.lo


def test_log_ranges_reach_both_ends() -> None:
    """Over many draws a log-uniform count takes small and large values alike."""
    rng = random.Random(0)
    draws = [Count(1, 500, log=True).draw(rng) for _ in range(2000)]
    assert min(draws) == 1
    assert max(draws) > 400
    assert 10 < sorted(draws)[1000] < 40  # the median near sqrt(500)


def _mix_run(seed: int, scale: float = 0.2, ticks: int | None = None) -> tuple[Mix, list[Request]]:
    mix = draw_mix(seed, timeline=TIMELINE, scale=scale)
    simulation = mix.simulation(scale=scale, timeline=TIMELINE)
    requests = []
    for k in range(ticks if ticks is not None else TIMELINE.ticks):
        requests.extend(simulation.tick(k))
    return mix, requests


def test_labels_are_right() -> None:
    mix = draw_mix(5, timeline=TIMELINE, scale=0.2)
    simulation = mix.simulation(scale=0.2, timeline=TIMELINE)
    assert [s.name for s in simulation.scenarios] == list(FAMILIES)
    for scenario in simulation.scenarios:
        subjects = scenario.subjects()
        assert subjects, scenario.name
        labels = {s.label for s in subjects}
        if scenario.name == "leaked-key":
            # the key is the attacker; its owner is legitimate until the leak
            (key,) = [s for s in subjects if s.label == "attack"]
            (owner,) = [s for s in subjects if s.label == "legit"]
            assert key.scope == "key"
            assert ("key", key.value) in owner.aliases
            assert owner.until == key.onset
        elif scenario.name in ATTACK_FAMILIES:
            assert labels == {"attack"}, scenario.name
        else:
            assert labels == {"legit"}, scenario.name
        for subject in subjects:
            assert subject.scenario == scenario.name
            if subject.label == "attack":
                assert TIMELINE.attack_at <= subject.onset < TIMELINE.duration
    # every attacking source is a subject, whatever it sends
    attackers = {s.identity for s in simulation.subjects if s.label == "attack"}
    requests = [r for k in range(TIMELINE.ticks) for r in simulation.tick(k)]
    assert requests
    for request in requests:
        check, subject = request.check, request.subject
        named = {("ip", check.ip), ("key", check.key), ("user_id", check.user_id)}
        # the check carries one of the identities its subject is blocked by
        assert named & set(subject.identities), (subject, check)
        if subject.label == "attack":
            assert subject.identity in attackers
    sent = {r.subject.scenario for r in requests}
    assert sent == set(FAMILIES)


def test_the_same_seed_gives_the_same_mix_and_other_seeds_differ() -> None:
    first, requests = _mix_run(11, ticks=200)
    again, requests_again = _mix_run(11, ticks=200)
    params = [dict(i.params) for i in first.instances]
    assert params == [dict(i.params) for i in again.instances]
    assert requests == requests_again
    other, other_requests = _mix_run(12, ticks=200)
    assert params != [dict(i.params) for i in other.instances]
    assert requests != other_requests
    assert {r.check.ip for r in requests}.isdisjoint({r.check.ip for r in other_requests})


def test_choosing_families_leaves_each_unchanged() -> None:
    everything = draw_mix(3, timeline=TIMELINE, scale=0.2)
    some = draw_mix(3, timeline=TIMELINE, scale=0.2, names=("carding", "steady"))
    chosen = {i.name: dict(i.params) for i in some.instances}
    assert chosen == {
        i.name: dict(i.params) for i in everything.instances if i.name in ("carding", "steady")
    }
    with pytest.raises(ValueError, match="unknown family 'ddos'"):
        draw_mix(3, timeline=TIMELINE, names=("ddos",))


def test_routes_and_user_agents_are_renamed_per_seed() -> None:
    fixed_routes = {"/login", "/search", "/api/account", "/checkout"}
    fixed_agents = set(agents.BROWSERS + agents.MOBILE + agents.TOOLS + (agents.HEADLESS,))
    vocabularies = [Vocabulary(random.Random(seed)) for seed in range(20)]
    logins = {v.login for v in vocabularies}
    assert len(logins) == 20
    assert not logins & fixed_routes
    _, requests = _mix_run(4, ticks=300)
    _, other = _mix_run(5, ticks=300)
    routes = {r.check.route for r in requests}
    assert not routes & fixed_routes
    assert not {r.check.user_agent for r in requests} & fixed_agents
    assert routes.isdisjoint({r.check.route for r in other})


def test_seed_lists_are_parsed_and_bad_ones_refused() -> None:
    assert detection_families.seeds("1-3,7") == [1, 2, 3, 7]
    assert detection_families.seeds("none") == []
    with pytest.raises(Exception, match="bad seed list 'x'"):
        detection_families.seeds("x")


def test_the_harness_refuses_overlapping_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        detection_families.main(["--train-seeds", "1-5", "--test-seeds", "5-6"])
    assert exit_.value.code == 2
    assert "seeds [5] are both training and held-out seeds" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_the_offline_harness_reports_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    code = detection_families.main(
        [
            "--train-seeds",
            "1",
            "--test-seeds",
            "101",
            "--duration",
            "90",
            "--attack-at",
            "20",
            "--scale",
            "0.3",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    training, _, held_out = out.partition("HELD-OUT seeds")
    assert "TRAINING seeds (1)" in training
    attack_part, _, legit_part = held_out.partition("legitimate subjects")
    for name in ATTACK_FAMILIES:
        line = next(x for x in attack_part.splitlines() if x.strip().startswith(name + " "))
        assert "recall" in line, line
        assert "seeds]" in line, line
    for name in LEGIT_FAMILIES | {"leaked-key"}:
        line = next(x for x in legit_part.splitlines() if x.strip().startswith(name + " "))
        assert "subjects)" in line, line


def test_family_options_are_checked() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--api-key", "k", "--family", "carding"])
    assert result.exit_code == 2
    assert "--family needs --families" in result.output
    result = runner.invoke(
        main, ["simulate", "--api-key", "k", "--families", "--scenario", "burst"]
    )
    assert result.exit_code == 2
    assert "exclude each other" in result.output


@pytest.fixture
def families_process(limiter: RatewatchProcess, admin_key: str) -> Iterator[subprocess.Popen[str]]:
    with simulating(
        limiter, admin_key, "--families", "--duration", "6", "--attack-at", "2",
        "--scale", "0.05", "--seed", "9",
    ) as process:  # fmt: skip
        yield process


def test_families_are_played_against_the_limiter(
    families_process: subprocess.Popen[str],
) -> None:
    out, err = families_process.communicate(timeout=60)
    assert families_process.returncode == 0, err
    report = json.loads(out)
    assert {s["name"] for s in report["scenarios"]} == set(FAMILIES)
    traffic = report["traffic"]
    assert traffic["checks_answered"] == traffic["checks_sent"] > 100
    assert traffic["checks_failed"] == 0
