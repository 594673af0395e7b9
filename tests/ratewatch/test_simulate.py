"""`ratewatch simulate`: the traffic model, the scorer, and a run against the real limiter."""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from limiter import MemoryStore
from limiter.algorithms import Algorithm
from limiter.store import Check as StoreCheck
from ratewatch.cli import main
from ratewatch.client import Check
from ratewatch.simulate import SCENARIOS, Request, Simulation, Subject, Timeline
from ratewatch.simulate.driver import SeenBlock
from ratewatch.simulate.model import Identity
from ratewatch.simulate.scorer import Targets, percentile, score
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, free_port
from tests.support.simulate_runs import simulating

pytestmark = pytest.mark.timeout(60)

TIMELINE = Timeline(duration=180, attack_at=60)
LEGIT = ("steady", "diurnal", "flash-crowd", "nat")
ATTACKS = (
    "credential-stuffing",
    "leaked-key",
    "scraping",
    "burst",
    "key-enumeration",
    "low-and-slow",
)


@dataclass(frozen=True)
class Sent:
    t: float
    request: Request

    @property
    def check(self) -> Check:
        return self.request.check

    @property
    def subject(self) -> Subject:
        return self.request.subject


@dataclass
class Run:
    subjects: list[Subject]
    sent: list[Sent]

    def of(self, scenario: str) -> list[Sent]:
        return [s for s in self.sent if s.subject.scenario == scenario]

    def subjects_of(self, scenario: str) -> list[Subject]:
        return [s for s in self.subjects if s.scenario == scenario]


def generate(seed: int = 1, scale: float = 1.0, timeline: Timeline = TIMELINE) -> Run:
    simulation = Simulation(list(SCENARIOS), seed=seed, scale=scale, timeline=timeline)
    sent = [
        Sent(k * timeline.tick, request)
        for k in range(timeline.ticks)
        for request in simulation.tick(k)
    ]
    return Run(simulation.subjects, sent)


@pytest.fixture(scope="module")
def run() -> Run:
    """The default run's traffic: 180 s, attacks from 60 s, scale 1, seed 1."""
    return generate()


def identities_of(check: Check) -> set[tuple[str, str]]:
    named = {("key", check.key)}
    if check.ip is not None:
        named.add(("ip", check.ip))
    if check.user_id is not None:
        named.add(("user_id", check.user_id))
    return named


def deny_ratio(sent: list[Sent]) -> float:
    """The share of ``sent`` the limiter's own arithmetic denies, in simulated time."""
    now = [0]
    store = MemoryStore(clock=lambda: now[0])
    denied = 0
    for s in sorted(sent, key=lambda s: s.t):
        now[0] = int(s.t * 1000) + 1
        check = s.check
        outcome = store.decide_one(
            StoreCheck(
                "t", check.key, Algorithm.SLIDING_WINDOW, check.limit, check.window * 1000, 1
            )
        )
        denied += not outcome.allowed
    return denied / len(sent)


# --- the traffic model ---------------------------------------------------------------


def test_the_same_seed_gives_the_same_traffic() -> None:
    timeline = Timeline(30, 10)
    first, second = generate(7, 0.1, timeline), generate(7, 0.1, timeline)
    assert first.subjects == second.subjects
    assert [(s.t, s.request) for s in first.sent] == [(s.t, s.request) for s in second.sent]
    other = generate(8, 0.1, timeline)
    assert {s.identity for s in other.subjects}.isdisjoint(
        s.identity for s in first.subjects if s.scenario != "leaked-key"
    )


def test_choosing_scenarios_leaves_each_unchanged(run: Run) -> None:
    alone = Simulation(["burst", "nat"], seed=1, scale=1.0, timeline=TIMELINE)
    assert alone.subjects == run.subjects_of("nat") + run.subjects_of("burst")


def test_bad_model_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'ddos'"):
        Simulation(["ddos"], seed=1, scale=1, timeline=TIMELINE)
    with pytest.raises(ValueError, match="within the run's duration"):
        Timeline(60, 60)
    simulation = Simulation(["burst"], seed=1, scale=1, timeline=TIMELINE)
    with pytest.raises(ValueError, match="tick 3 asked for"):
        simulation.tick(3)


def test_labels_and_the_subject_of_each_attack(run: Run) -> None:
    counts = Counter(s.scenario for s in run.subjects)
    assert set(counts) == set(SCENARIOS)
    for name in LEGIT:
        assert {s.label for s in run.subjects_of(name)} == {"legit"}
    for name in ATTACKS:
        expected = {"attack", "legit"} if name == "leaked-key" else {"attack"}
        assert {s.label for s in run.subjects_of(name)} == expected
    # the leaked key's owner: legitimate on its own server and key until the leak
    (owner,) = [s for s in run.subjects_of("leaked-key") if s.label == "legit"]
    (leak,) = [s for s in run.subjects_of("leaked-key") if s.label == "attack"]
    assert (owner.scope, owner.aliases, owner.until) == ("ip", (leak.identity,), leak.onset)
    scopes = {
        name: {s.scope for s in run.subjects_of(name) if s.label == "attack"} for name in ATTACKS
    }
    assert scopes == {
        "credential-stuffing": {"ip"},
        "leaked-key": {"key"},
        "scraping": {"ip"},
        "burst": {"ip"},
        "key-enumeration": {"ip"},
        "low-and-slow": {"ip"},
    }
    assert counts["burst"] == counts["key-enumeration"] == 1
    assert counts["leaked-key"] == 2  # the key, and its owner
    assert counts["scraping"] == 30
    assert counts["low-and-slow"] == 5
    for bot in run.subjects_of("low-and-slow"):  # its account counts as the bot too
        assert {scope for scope, _ in bot.aliases} == {"user_id", "key"}
    assert counts["steady"] == 400
    assert counts["nat"] == 300
    assert counts["flash-crowd"] == 400


def test_subjects_are_distinct_and_no_identity_is_both_legit_and_attack(run: Run) -> None:
    primary = [s.identity for s in run.subjects]
    assert len(primary) == len(set(primary))
    labels: dict[Identity, set[str]] = defaultdict(set)
    for subject in run.subjects:
        for identity in subject.identities:
            labels[identity].add(subject.label)
    # one exception: the leaked key is its owner's until the leak, the attacker's after
    both = [identity for identity, found in labels.items() if len(found) > 1]
    assert both == [s.identity for s in run.subjects_of("leaked-key") if s.label == "attack"]
    owner = next(s for s in run.subjects_of("leaked-key") if s.label == "legit")
    assert owner.until == TIMELINE.attack_at


def test_every_check_names_its_subject_and_is_valid(run: Run) -> None:
    assert len(run.sent) > 20_000
    for s in run.sent:
        assert identities_of(s.check) & set(s.subject.identities), s
        assert s.check.limit >= 1
        assert 1 <= s.check.window <= 3600
        assert s.check.route
        assert s.check.user_agent


def test_attacks_begin_at_their_onset(run: Run) -> None:
    for s in run.sent:
        if s.subject.label == "attack":
            assert s.t + TIMELINE.tick > s.subject.onset, s
    # only the leaked key's owner used the key before the leak, from one server
    early = {s.check.ip for s in run.of("leaked-key") if s.t < TIMELINE.attack_at}
    late = {s.check.ip for s in run.of("leaked-key") if s.t >= TIMELINE.attack_at + 5}
    assert len(early) == 1
    assert len(late) >= 35
    for name in ATTACKS:
        attackers = [s for s in run.of(name) if s.subject.label == "attack"]
        assert min(s.subject.onset for s in attackers) >= TIMELINE.attack_at


def test_steady_users_keep_their_ip_and_browser_and_browse_widely(run: Run) -> None:
    per_subject: dict[Identity, list[Check]] = defaultdict(list)
    for s in run.of("steady"):
        per_subject[s.subject.identity].append(s.check)
    for checks in per_subject.values():
        assert len({c.ip for c in checks}) == 1
        assert len({c.user_agent for c in checks}) == 1
    routes = {c.route.split("/")[1] for cs in per_subject.values() for c in cs if c.route}
    assert len(routes) >= 8
    per_minute = len(run.of("steady")) / 400 / (TIMELINE.duration / 60)
    assert 3 <= per_minute <= 7
    anonymous = [s for s in run.subjects_of("steady") if s.scope == "ip"]
    assert 0.15 <= len(anonymous) / 400 <= 0.35
    assert deny_ratio(run.of("steady")) == 0


def test_the_diurnal_rate_ramps_up_three_times(run: Run) -> None:
    diurnal = run.of("diurnal")
    start = sum(1 for s in diurnal if s.t < 30)
    end = sum(1 for s in diurnal if s.t >= TIMELINE.duration - 30)
    assert 2.2 <= end / start <= 3.6


def test_the_flash_crowd_is_new_and_arrives_together(run: Run) -> None:
    crowd = run.subjects_of("flash-crowd")
    flash_at = TIMELINE.flash_at
    assert flash_at == 90
    assert all(flash_at <= s.onset <= flash_at + 15 for s in crowd)
    their_identities = {identity for s in crowd for identity in s.identities}
    for s in run.sent:  # never seen before the crowd's start, in any scenario
        if s.t < flash_at:
            assert not identities_of(s.check) & their_identities
    first: dict[Identity, Sent] = {}
    for s in run.of("flash-crowd"):
        first.setdefault(s.subject.identity, s)
        assert s.t + TIMELINE.tick > s.subject.onset
    assert all(s.check.route == "/login" for s in first.values())
    hot = Counter(s.check.route for s in run.of("flash-crowd")).most_common(1)[0]
    assert hot[0] == "/drops/spring-launch"
    assert len({s.check.ip for s in run.of("flash-crowd")}) == 400
    assert deny_ratio(run.of("flash-crowd")) == 0


def test_the_nat_customer_is_many_users_behind_one_ip(run: Run) -> None:
    nat = run.of("nat")
    assert len({s.check.ip for s in nat}) == 1
    assert len({s.check.user_id for s in nat}) >= 280
    assert len({s.check.key for s in nat}) >= 500  # user:<id> and login:<id>
    assert len({s.check.user_agent for s in nat}) >= 8
    assert len({s.check.route for s in nat}) >= 100
    assert len(nat) / TIMELINE.duration >= 15  # a heavy IP: 15+ requests a second
    assert all(("ip", nat[0].check.ip) in s.aliases for s in run.subjects_of("nat"))
    assert deny_ratio(nat) < 0.01


def test_credential_stuffing_rotates_ips_with_one_browser(run: Run) -> None:
    stuffing = run.of("credential-stuffing")
    assert {s.check.route for s in stuffing} == {"/login"}
    assert len({s.check.user_agent for s in stuffing}) == 1
    assert len({s.check.user_id for s in stuffing}) >= 250
    assert all(s.check.key == f"login:{s.check.user_id}" for s in stuffing)
    uses: dict[str | None, list[float]] = defaultdict(list)
    for s in stuffing:
        uses[s.check.ip].append(s.t)
    assert len(uses) >= 70
    for times in uses.values():  # each IP briefly (none is reused in 120 s)
        assert max(times) - min(times) <= 8
    active = Counter(round(s.t) for s in stuffing if s.t >= 70)
    assert max(len({s.check.ip for s in stuffing if round(s.t) == t}) for t in active) <= 6
    assert deny_ratio(stuffing) >= 0.3


def test_scraping_walks_the_catalogue_from_many_regular_ips(run: Run) -> None:
    scraping = run.of("scraping")
    items = [int(str(s.check.route).removeprefix("/items/")) for s in scraping]
    assert items == list(range(1, len(items) + 1))
    assert len({s.check.user_agent for s in scraping}) == 1
    per_ip: dict[str | None, list[float]] = defaultdict(list)
    for s in scraping:
        per_ip[s.check.ip].append(s.t)
    assert len(per_ip) == 30
    for times in per_ip.values():
        rate = len(times) / (TIMELINE.duration - TIMELINE.attack_at)
        assert 0.7 <= rate <= 0.85  # under the anonymous limit of 1 a second
    assert deny_ratio(scraping) == 0


def test_burst_enumeration_and_low_and_slow(run: Run) -> None:
    burst = run.of("burst")
    assert len({s.check.ip for s in burst}) == 1
    per_second = Counter(int(s.t) for s in burst)
    assert min(per_second.values()) >= 150
    assert deny_ratio(burst) >= 0.9

    enumeration = run.of("key-enumeration")
    assert len({s.check.ip for s in enumeration}) == 1
    numbers = [int(s.check.key.removeprefix("user:")) for s in enumeration]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert len(numbers) >= 1000

    for bot in run.subjects_of("low-and-slow"):
        times = [s.t for s in run.of("low-and-slow") if s.subject == bot]
        per_minute = len(times) / (TIMELINE.duration - TIMELINE.attack_at) * 60
        assert 90 <= per_minute < 100
        busiest = max(sum(1 for t in times if start <= t < start + 60) for start in times)
        assert busiest <= 100
    assert deny_ratio(run.of("low-and-slow")) == 0


def test_a_tick_fits_in_one_batch_at_scale_one(run: Run) -> None:
    per_tick = Counter(s.t for s in run.sent)
    assert max(per_tick.values()) <= 1000


# --- the scorer ----------------------------------------------------------------------


def subject(value: str, label: str, scenario: str, onset: float = 60, **kw: Any) -> Subject:
    scope = "user_id" if label == "legit" else "ip"
    return Subject(scope, value, label, scenario, onset, **kw)  # type: ignore[arg-type]


def block(block_id: str, scope: str, value: str, at: float, mode: str = "enforce") -> SeenBlock:
    return SeenBlock(block_id, scope, value, mode, at)


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([0.0, 10.0], 0.5) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == 4.8


def test_score_recall_precision_and_time_to_block() -> None:
    office = ("ip", "198.51.100.7")
    attackers = [
        subject("1.1.1.1", "attack", "burst"),  # blocked 10 s after onset
        subject("2.2.2.2", "attack", "burst"),  # blocked late: 90 s after onset
        subject("3.3.3.3", "attack", "burst"),  # denied "blocked" 5 s after, no block listed
        subject("4.4.4.4", "attack", "burst"),  # never blocked
        subject("5.5.5.5", "attack", "burst", onset=150),  # window ends after the run
    ]
    legit = [
        subject("u1", "legit", "steady", 0, aliases=(("ip", "9.9.9.1"),)),
        subject("u2", "legit", "steady", 0),
        subject("n1", "legit", "nat", 0, aliases=(office,)),
        subject("n2", "legit", "nat", 0, aliases=(office,)),
    ]
    blocks = [
        block("b1", "ip", "1.1.1.1", 70),
        block("b2", "ip", "2.2.2.2", 150),
        block("b3", "ip", "9.9.9.1", 30),  # a legit user's IP: false positive
        block("b4", "user_id", "victim-7", 80),  # nobody labelled
        block("b5", "ip", "198.51.100.7", 100, mode="shadow"),  # two NAT users: one block
        block("b6", "ip", "3.3.3.3", 66),  # listed after the denial was seen
    ]
    denied: dict[Identity, float] = {("ip", "3.3.3.3"): 65.0, ("user_id", "u2"): 170.0}
    result = score(
        [
            ("steady", "legit", legit[:2]),
            ("nat", "legit", legit[2:]),
            ("burst", "attack", attackers),
        ],
        denied,
        blocks,
        end=180,
    )
    steady, nat, burst = result.scenarios
    assert (burst.attack, burst.eligible, burst.censored) == (5, 4, 1)
    assert burst.attack_blocked == 3
    assert burst.attack_blocked_in_window == 2  # 1.1.1.1 and 3.3.3.3; 2.2.2.2 came late
    assert burst.recall_in_window == 0.5
    assert burst.recall == 0.6
    assert burst.times_to_block == (5.0, 10.0, 90.0)
    assert burst.time_to_block(0.5) == 10.0
    assert burst.time_to_block(1.0) == 90.0
    assert (burst.blocks_true, burst.blocks_false, burst.precision) == (3, 0, 1.0)

    assert (steady.legit_blocked, steady.legit_share) == (2, 1.0)
    assert (steady.blocks_true, steady.blocks_false, steady.precision) == (0, 1, 0.0)
    assert (nat.legit_blocked, nat.shadow, nat.blocks_false) == (2, 2, 1)

    overall = result.overall
    assert (overall.blocks_true, overall.blocks_false) == (3, 2)
    assert overall.precision == 0.6
    assert (overall.legit, overall.legit_blocked) == (4, 4)
    verdicts = {v.block.id: v.matches for v in result.blocks}
    assert verdicts == {
        "b1": "attack",
        "b2": "attack",
        "b3": "legit",
        "b4": "none",
        "b5": "legit",
        "b6": "attack",
    }
    outcomes = {o.subject.value: o for o in result.outcomes}
    assert (outcomes["3.3.3.3"].via, outcomes["3.3.3.3"].blocked_at) == ("check", 65.0)
    assert (outcomes["u1"].via, outcomes["u1"].block_id) == ("block", "b3")
    assert outcomes["u2"].blocked_at == 170.0  # only seen through its checks
    assert outcomes["n1"].mode == "shadow"
    targets = {t.name: t.passed for t in result.targets}
    assert targets == {
        "recall within 60 s of onset >= 95% in every attack scenario": False,
        "legitimate subjects ever blocked <= 0.5%": False,
        "no nat subject blocked": False,
    }
    assert result.passed is False


def test_a_leaked_keys_block_before_the_leak_is_its_owners_false_positive() -> None:
    key = ("key", "pk_live_1")
    leak = Subject("key", "pk_live_1", "attack", "leaked-key", 60.0)
    owner = Subject("ip", "192.0.2.5", "legit", "leaked-key", 0.0, aliases=(key,), until=60.0)
    scenarios = [("leaked-key", "attack", [owner, leak])]

    early = score(
        scenarios, {("ip", "192.0.2.5"): 41.0}, [block("b1", "key", "pk_live_1", 40)], end=180
    )
    (stats,) = early.scenarios
    assert [v.matches for v in early.blocks] == ["legit"]
    assert (stats.legit_blocked, stats.blocks_false, stats.blocks_true) == (1, 1, 0)
    assert stats.attack_blocked == 0  # a block before the leak did not catch the leak

    # after the leak the key's block is the attack's; the owner losing its key then (its
    # checks answered "blocked") is the price of stopping the leak, not a false positive
    due = score(
        scenarios,
        {("ip", "192.0.2.5"): 63.0},
        [block("b1", "key", "pk_live_1", 62)],
        end=180,
    )
    (stats,) = due.scenarios
    assert [v.matches for v in due.blocks] == ["attack"]
    assert (stats.legit_blocked, stats.blocks_false, stats.blocks_true) == (0, 0, 1)
    assert stats.times_to_block == (2.0,)


def test_score_a_clean_run_and_a_run_too_short_to_tell() -> None:
    attackers = [subject("1.1.1.1", "attack", "scraping", onset=3)]
    legit = [subject("u1", "legit", "flash-crowd", 4)]
    scenarios = [("flash-crowd", "legit", legit), ("scraping", "attack", attackers)]
    short = score(scenarios, {}, [block("b1", "ip", "1.1.1.1", 4.5)], end=8)
    assert short.scenarios[1].recall == 1.0
    assert short.scenarios[1].recall_in_window is None
    assert short.scenarios[1].times_to_block == (1.5,)
    assert [t.passed for t in short.targets] == [None, True, True]
    assert short.passed is None
    clean = score(scenarios, {}, [block("b1", "ip", "1.1.1.1", 50)], end=100)
    assert clean.scenarios[1].recall_in_window == 1.0
    assert clean.passed is True
    strict = Targets(window=30)
    late = score(scenarios, {}, [block("b1", "ip", "1.1.1.1", 50)], end=100, targets=strict)
    assert late.scenarios[1].recall_in_window == 0.0
    assert late.passed is False


# --- the command ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack-at", "60", "--duration", "60"], "--attack-at (60) must be earlier"),
        (["--scenario", "ddos"], "'ddos' is not one of"),
        (["--scale", "0"], "--scale"),
        (["--url", "localhost:8080"], "is not an http:// or https:// URL"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["simulate", "--api-key", "k", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_missing_key_or_an_unreachable_service_is_one_line() -> None:
    runner = CliRunner(env={"RATEWATCH_API_KEY": None, "RATEWATCH_BOOTSTRAP_KEY": None})
    result = runner.invoke(main, ["simulate"])
    assert result.exit_code == 2
    assert "no API key" in result.output
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(main, ["simulate", "--url", url, "--api-key", "k"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: cannot reach {url}/v1/blocks")


def test_a_refused_key_is_one_line(limiter: RatewatchProcess) -> None:
    result = CliRunner().invoke(
        main, ["simulate", "--url", limiter.base_url, "--api-key", "rwk_" + "x" * 43]
    )
    assert result.exit_code == 1
    assert "refused the API key (401)" in result.output
    assert len(result.output.strip().splitlines()) <= 2  # the progress bar's label, the error


@pytest.fixture
def simulate_process(limiter: RatewatchProcess, admin_key: str) -> Iterator[subprocess.Popen[str]]:
    with simulating(
        limiter, admin_key, "--duration", "8", "--attack-at", "3", "--scale", "0.05"
    ) as process:
        yield process


def test_a_run_against_the_limiter_measures_blocks(
    limiter: RatewatchProcess,
    admin_key: str,
    api: httpx.Client,
    simulate_process: subprocess.Popen[str],
) -> None:
    """No detector exists here: the test blocks an attacker and a legitimate user itself,
    and the report must show both, as a hit with its time to block and a false positive."""
    model = Simulation(list(SCENARIOS), seed=1, scale=0.05, timeline=Timeline(8, 3))
    attacker = next(s for s in model.subjects if s.scenario == "burst")
    victim = next(s for s in model.subjects if s.scenario == "steady" and s.scope == "user_id")

    def burst_began() -> bool:
        # cost 0 reads the attacker's counter without using it
        answer = api.post(
            "/v1/check", json={"key": f"ip:{attacker.value}", "limit": 60, "window": 60, "cost": 0}
        )
        return bool(answer.json()["remaining"] < 60)

    wait_until(burst_began, 20, "the simulated burst", 0.05)
    for scope, value in (("ip", attacker.value), ("user_id", victim.value)):
        created = api.post(
            "/v1/blocks", json={"scope": scope, "value": value, "ttl": 60, "reason": "test"}
        )
        assert created.status_code == 201, created.text

    out, err = simulate_process.communicate(timeout=40)
    assert simulate_process.returncode == 0, err
    report = json.loads(out)

    traffic = report["traffic"]
    assert traffic["checks_answered"] == traffic["checks_sent"] > 500
    assert traffic["reasons"]["ok"] > 0
    assert traffic["reasons"]["blocked"] > 0  # the burst after its block
    assert traffic["checks_failed"] == 0

    blocked = {(s["scope"], s["value"]): s for s in report["blocked_subjects"]}
    hit = blocked[("ip", attacker.value)]
    assert (hit["label"], hit["scenario"]) == ("attack", "burst")
    assert 0 <= hit["time_to_block"] < 15
    miss = blocked[("user_id", victim.value)]
    assert (miss["label"], miss["scenario"]) == ("legit", "steady")
    assert {v["matches"] for v in report["blocks"]} == {"attack", "legit"}

    scenarios = {s["name"]: s for s in report["scenarios"]}
    assert scenarios["burst"]["attack_blocked"] == 1
    assert scenarios["burst"]["recall"] == 1.0
    assert scenarios["burst"]["time_to_block"]["max"] == hit["time_to_block"]
    assert scenarios["steady"]["legit_blocked"] == 1
    assert scenarios["steady"]["blocks"] == {"true": 0, "false": 1}
    assert report["overall"]["precision"] == 0.5
    assert report["overall"]["attack_blocked"] == 1
    legit_target = next(t for t in report["targets"] if t["name"].startswith("legitimate"))
    assert legit_target["passed"] is False
    assert report["passed"] is False
