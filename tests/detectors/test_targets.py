"""Accounts pressed from many new addresses (``detectors/targets.py``) and keys whose
addresses grow beyond their own history (the ``key_growth`` rule), on decision frames
built here: the brute force and the leaked key are found; the offices, carriers, retrying
clients, people on several devices, partners and servers that move are not."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from detectors.campaigns import DETECTOR, SCORE, CampaignChange
from detectors.coordinated import CoordinatedDetector
from detectors.detector import AbuseDetector
from detectors.features import subject_features
from detectors.incident_store import Incident, Member
from detectors.incidents import campaign_of
from detectors.rules import RuleThresholds, apply_rules
from detectors.sources import SourceBook
from detectors.targets import DETECTOR_VERSION, TargetDetector, TargetSettings
from detectors.verdict import Verdict
from tests.support.coordinated_traffic import LOGIN, WARM_MS, brute_force, crowd, office, people
from tests.support.decision_frames import (
    T0,
    TENANT,
    Row,
    coordinated_verdicts,
    frame,
    rounds,
    row,
)

pytestmark = pytest.mark.timeout(60)


def devices(count: int, *, until_ms: int = WARM_MS + 60_000) -> list[Row]:
    """One person signing in from ``count`` devices (phone, laptop, tablet, …), each on an
    address of its own, at a person's pace."""
    rows = []
    for n in range(count):
        ip = f"192.0.2.{n + 1}"
        for ms in range(WARM_MS + n * 3_000, until_ms, 6_000):
            rows.append(row(T0 + ms, ip, route="/home", key="user:bob", user_id="bob"))
    return rows


def retrying(*, until_ms: int = WARM_MS + 60_000) -> list[Row]:
    """A client over its limit from one address, retrying after each 429: much denied."""
    return [
        row(
            T0 + ms,
            "100.64.9.9",
            route="/api/sync",
            key="user:svc",
            user_id="svc",
            agent="sync/2",
            allowed=ms % 3 == 0,
        )
        for ms in range(WARM_MS, until_ms, 300)
    ]


def carrier(addresses: int, accounts: int, *, until_ms: int = WARM_MS + 60_000) -> list[Row]:
    """A carrier's NAT: ``accounts`` people behind ``addresses`` shared addresses, each
    person's checks leaving from any of them (new ones keep appearing for an account)."""
    rng = random.Random(13)
    rows = []
    for ms in range(WARM_MS, until_ms, 150):  # every address new to every account
        user = f"mobile{rng.randrange(accounts)}"
        ip = f"100.70.0.{rng.randrange(addresses) + 1}"
        rows.append(
            row(
                T0 + ms,
                ip,
                route=rng.choice(["/home", LOGIN, "/feed"]),
                key=f"user:{user}",
                user_id=user,
                allowed=rng.random() > 0.05,
            )
        )
    return rows


def partner(
    servers: int,
    *,
    from_ms: int = 0,
    until_ms: int = WARM_MS + 60_000,
    first: int = 1,
    prefix: str = "172.16.5",
) -> list[Row]:
    """A partner's servers calling their endpoints with one key, fast, from ``from_ms``."""
    rows = []
    for n in range(servers):
        ip = f"{prefix}.{first + n}"
        for ms in range(from_ms + n * 50, until_ms, 250):
            rows.append(
                row(
                    T0 + ms,
                    ip,
                    route="/partner/orders",
                    key="key:partner",
                    agent="partner-client/1.2",
                )
            )
    return rows


def run(
    detector: TargetDetector, rows: list[Row], until_ms: int, step_ms: int = 2_000
) -> tuple[list[Verdict], list[CampaignChange]]:
    """Feed ``rows`` in and evaluate every ``step_ms``, as the detection loop does."""
    verdicts: list[Verdict] = []
    changes: list[CampaignChange] = []
    for now, chunk in rounds(rows, until_ms, step_ms):
        detector.sources.observe(chunk)
        detector.book.observe(chunk)
        found, changed = detector.evaluate(now)
        detector.sources.forget(now)
        verdicts += found
        changes += changed
    return verdicts, changes


def detector(**settings: int | float) -> TargetDetector:
    return TargetDetector(TargetSettings(**settings), sources=SourceBook())  # type: ignore[arg-type]


@pytest.mark.parametrize("in_key", [False, True])
def test_a_brute_force_from_many_addresses_is_one_campaign(in_key: bool) -> None:
    found = detector()
    rows = brute_force(6, in_key=in_key) + people(40) + office(3, 30, until_ms=150_000)
    verdicts, changes = run(found, rows, 150_000)
    attackers = {f"203.0.113.{n}" for n in range(1, 7)}
    assert {v.subject for v in verdicts} == attackers
    assert all(v.scope == "ip" and v.detector == DETECTOR and v.score == SCORE for v in verdicts)
    assert all(v.detector_version == DETECTOR_VERSION for v in verdicts)
    incidents = {v.campaign.incident_id for v in verdicts if v.campaign}
    assert len(incidents) == 1
    account = f"{LOGIN}:alice" if in_key else "alice"
    assert all("brute force on one account" in v.reasons[0] for v in verdicts)
    assert all(repr(account) in v.reasons[0] for v in verdicts)
    opened = [c for c in changes if c.kind == "opened"]
    assert len(opened) == 1
    campaign = opened[0].campaign
    assert campaign.family == "brute-force"
    evidence = campaign.evidence
    assert evidence["target"] == {"scope": "key" if in_key else "user_id", "value": account}
    assert evidence["usual_addresses"] == 0
    assert evidence["new_addresses"] == 6
    assert "brute force on one account" in campaign.reasons[0]
    # blocked within seconds of showing itself (the sources join within 10 s)
    first = min(v.observed_at_ms for v in verdicts) - T0
    assert first <= WARM_MS + 12_000


def test_an_account_pressed_fast_but_never_denied_is_pressed_too() -> None:
    found = detector()
    rows = brute_force(4, every_ms=900, denied=False) + people(40)
    verdicts, _ = run(found, rows, 150_000)
    assert {v.subject for v in verdicts} == {f"203.0.113.{n}" for n in range(1, 5)}


def test_later_addresses_join_the_open_campaign() -> None:
    found = detector()
    rows = brute_force(4) + [
        r | {"ip": "203.0.113.99", "key": "ip:203.0.113.99"}
        for r in brute_force(1, onset_ms=WARM_MS + 30_000)
    ]
    verdicts, changes = run(found, rows + people(40), 150_000)
    assert "203.0.113.99" in {v.subject for v in verdicts}
    assert next(c.kind for c in changes if c.kind != "closed") == "opened"
    assert any(c.kind == "updated" and "203.0.113.99" in c.joined for c in changes)
    assert len({v.campaign.incident_id for v in verdicts if v.campaign}) == 1


@pytest.mark.parametrize(
    "legit",
    [
        pytest.param(devices(3), id="one person on three devices"),
        pytest.param(retrying(), id="a client retrying after 429 from one address"),
        pytest.param(carrier(6, 80), id="a carrier NAT: accounts hopping shared addresses"),
        pytest.param(office(4, 60, until_ms=150_000), id="an office behind NAT addresses"),
        pytest.param(partner(4), id="a partner's four servers since the start"),
        pytest.param(crowd(50, until_ms=150_000), id="a launch crowd"),
        pytest.param(brute_force(2), id="two addresses: as many as a person's devices"),
    ],
)
def test_what_is_no_pressed_account(legit: list[Row]) -> None:
    verdicts, changes = run(detector(), legit + people(40), 150_000)
    assert verdicts == []
    assert changes == []


def test_an_account_judged_against_its_own_history_and_the_tenants() -> None:
    # a partner's key used from four servers for minutes: four more are not many for it
    rows = partner(4) + partner(4, from_ms=WARM_MS, first=11) + people(40)
    assert run(detector(), rows, 150_000)[0] == []
    # ... but for an account used from one place, four new ones pressing it are
    usual = [
        row(T0 + ms, "192.0.2.200", route="/home", key="user:alice", user_id="alice")
        for ms in range(0, WARM_MS, 5_000)
    ]
    verdicts, _ = run(detector(), usual + brute_force(4) + people(40), 150_000)
    assert {v.subject for v in verdicts} == {f"203.0.113.{n}" for n in range(1, 5)}
    assert "192.0.2.200" not in {v.subject for v in verdicts}
    # a tenant whose people each use three devices (addresses) needs more than four
    devices_each = [
        r | {"ip": f"10.{n % 3}.{int(str(r['user_id'])[6:])}.1"} for n, r in enumerate(people(40))
    ]
    assert run(detector(), devices_each + brute_force(4), 150_000)[0] == []
    assert run(detector(), devices_each + brute_force(10), 150_000)[0] != []


def test_nothing_is_new_before_the_detector_watched_the_tenant() -> None:
    # in its first minute every address is new to every account
    rows = brute_force(6, onset_ms=0, until_ms=50_000) + people(40, until_ms=50_000)
    assert run(detector(), rows, 50_000)[0] == []


def test_the_coordinated_detector_blocks_the_pressing_addresses_as_members() -> None:
    coordinated = CoordinatedDetector(AbuseDetector())
    verdicts = coordinated_verdicts(coordinated, brute_force(6) + people(40), 150_000, 2_000)
    pressed = [v for v in verdicts if v.detector_version == DETECTOR_VERSION]
    assert {v.subject for v in pressed} == {f"203.0.113.{n}" for n in range(1, 7)}
    ips = [v.subject for v in verdicts if v.scope == "ip"]
    assert len(ips) == len(set(ips))  # no second verdict of their own
    # the account is named in the evidence, not blocked by the campaign
    assert all(v.scope == "ip" for v in pressed)
    kinds = [c.kind for c in coordinated.take_changes()]
    assert kinds.count("opened") == 1


def test_a_pressed_accounts_campaign_is_rebuilt_from_its_incident_and_carried_on() -> None:
    """What a restart does (``IncidentActions.resume``): the stored incident's evidence
    names the account, the campaign goes back to the pressed-account detector, once."""
    owner = partner(1, prefix="198.18.7")
    leak = [r for n in range(4) for r in partner(1, from_ms=WARM_MS + n * 1_000, first=n + 1)]
    _, changes = run(detector(), owner + leak + people(40), 150_000)
    [found] = [c.campaign for c in changes if c.kind == "opened"]
    stored = Incident(
        found.id, found.family, "open", "enforce", found.opened_ms / 1000, 0.0,
        found.first_seen_ms / 1000, found.last_seen_ms / 1000, evidence=dict(found.evidence),
        members=[Member(ip, "blocked", at / 1000) for ip, at in found.members.items()],
    )  # fmt: skip
    campaign = campaign_of(TENANT, stored)
    assert campaign is not None
    assert campaign.signature == found.signature
    assert campaign.signature.target == "key:partner"
    assert set(campaign.members) == set(found.members)

    coordinated = CoordinatedDetector(AbuseDetector())
    try:
        assert coordinated.resume(campaign)
        assert [c.id for c in coordinated.targets.campaigns] == [found.id]
        assert coordinated.campaigns.campaigns == []
        # that account has an open campaign now: a second is refused, nothing changed
        again = campaign_of(TENANT, replace(stored, id="inc_other"))
        assert again is not None
        assert not coordinated.resume(again)
        assert [c.id for c in coordinated.targets.campaigns] == [found.id]
    finally:
        coordinated.close()
    # evidence that does not name the account carries nothing on: closed at once
    for target in (None, {"scope": "ip", "value": "key:partner"}, {"scope": "key"}):
        evidence = {**stored.evidence, "target": target}
        assert campaign_of(TENANT, replace(stored, evidence=evidence)) is None
    rotating = replace(found, signature=replace(found.signature, shape="rotating"))
    assert not detector().resume(rotating)


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_addresses", 1), ("min_denied", 1.5), ("rate_factor", 0.0), ("new_ms", 0)],
)
def test_bad_settings_are_refused_naming_the_value(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TargetSettings(**{field: value})  # type: ignore[arg-type]


# --- a key's addresses growing beyond its own history (rules: key_growth) ----------------

NOW = T0 + 240_000


def calls(ip: str, start_s: int, end_s: int, every_s: float = 3.0) -> list[Row]:
    """A key's calls from ``ip`` between two moments (seconds after T0)."""
    rows, at = [], float(start_s)
    while at < end_s:
        rows.append(
            row(T0 + int(at * 1000), ip, route="/api/orders", key="key:acme-app", agent="acme/1")
        )
        at += every_s
    return rows


def growth(rows: list[Row]) -> list[str]:
    features = subject_features(frame(rows + people(30, until_ms=240_000)), NOW)
    keys = features["subject"].to_list()
    return [
        keys[hit.row] for hit in apply_rules(features, RuleThresholds()) if hit.rule == "key_growth"
    ]


def test_a_key_used_from_new_addresses_while_its_owner_goes_on_grows() -> None:
    owner = calls("198.18.0.1", 0, 240)
    leak = calls("203.0.113.50", 200, 240, 0.5) + calls("203.0.113.77", 205, 240, 0.5)
    assert growth(owner + leak) == ["key:acme-app"]


@pytest.mark.parametrize(
    "rows",
    [
        # a second device, or a server added: one new address
        pytest.param(calls("198.18.0.1", 0, 240) + calls("198.18.0.2", 200, 240), id="one new"),
        # moved to new servers: the old ones stopped
        pytest.param(
            calls("198.18.0.1", 0, 170)
            + calls("198.18.0.7", 190, 240)
            + calls("198.18.0.8", 190, 240),
            id="moved",
        ),
        # a key seen twice before: its history has not shown its servers yet
        pytest.param(
            calls("198.18.0.1", 170, 180, 6.0)
            + calls("198.18.0.1", 200, 240)
            + calls("198.18.0.2", 200, 240)
            + calls("198.18.0.3", 200, 240),
            id="no history",
        ),
        # a fleet of four, two of which happened to be quiet a while: not more than before
        pytest.param(
            calls("198.18.0.1", 0, 240)
            + calls("198.18.0.2", 0, 240)
            + calls("198.18.0.3", 0, 240)
            + calls("198.18.0.4", 205, 240)
            + calls("198.18.0.5", 205, 240),
            id="fleet",
        ),
    ],
)
def test_keys_that_only_look_like_growth(rows: list[Row]) -> None:
    assert growth(rows) == []


def test_new_addresses_flocking_to_a_key_its_owner_goes_on_using_are_a_leaked_key() -> None:
    owner = partner(1, prefix="198.18.7")
    leak = [
        r
        for n in range(4)
        for r in partner(1, from_ms=WARM_MS + n * 1_000, first=n + 1, prefix="203.0.113")
    ]
    verdicts, changes = run(detector(), owner + leak + people(40), 150_000)
    assert {v.subject for v in verdicts} == {f"203.0.113.{n}" for n in range(1, 5)}
    opened = [c.campaign for c in changes if c.kind == "opened"]
    assert [c.family for c in opened] == ["leaked-key"]
    assert opened[0].evidence["usual_addresses"] == 1
    assert opened[0].reasons[0].startswith("a key shared beyond its owners")
