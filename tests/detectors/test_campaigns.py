"""Campaign grouping (``detectors/campaigns.py``) on decision frames built here: sources that
start together and behave alike are one campaign; crowds, offices and partners are not."""

from __future__ import annotations

import pytest

from detectors.campaigns import (
    DETECTOR,
    SCORE,
    CampaignChange,
    CampaignDetector,
    CampaignSettings,
)
from detectors.coordinated import CoordinatedDetector
from detectors.detector import AbuseDetector
from detectors.verdict import Verdict
from tests.support.coordinated_traffic import crowd, office, run_campaigns, stuffers
from tests.support.decision_frames import T0, Row, coordinated_verdicts, rounds, row

pytestmark = pytest.mark.timeout(60)


def scrapers(count: int, *, until_ms: int = 60_000) -> list[Row]:
    """``count`` anonymous addresses walking the catalogue page by page."""
    rows, page = [], 0
    for n in range(count):
        ip = f"192.0.2.{n + 1}"
        for ms in range(n * 500, until_ms, 6_000):
            page += 1
            rows.append(row(T0 + ms, ip, route=f"/catalogue/{page}", key=f"ip:{ip}"))
    return rows


def shoppers(count: int, *, until_ms: int = 60_000) -> list[Row]:
    """Signed-in people browsing product pages together: walking, but themselves."""
    rows, page = [], 0
    for n in range(count):
        ip, user = f"198.18.0.{n + 1}", f"shopper{n}"
        for ms in range(n * 300, until_ms, 6_000):
            page += 1
            rows.append(row(T0 + ms, ip, route=f"/product/{page}", key=f"user:{user}",
                            user_id=user))  # fmt: skip
    return rows


def households(count: int, *, until_ms: int = 60_000) -> list[Row]:
    """``count`` homes of two people sharing an address, all on the same popular page
    from the start: each address rotates between two identities."""
    rows = []
    for n in range(count):
        ip = f"10.0.{n // 250}.{n % 250 + 1}"
        for ms, who in ((1_000, 0), (15_000, 1), (40_000, 0)):
            if ms < until_ms:
                user = f"home{n}-{who}"
                rows.append(row(T0 + ms, ip, route="/api/home", key=f"user:{user}",
                                user_id=user))  # fmt: skip
    return rows


def test_distributed_stuffing_is_one_campaign_blocked_with_one_explanation() -> None:
    detector = CampaignDetector()
    verdicts, changes = run_campaigns(detector, stuffers(30) + crowd(40) + office(3, 60), 60_000)
    members = {v.subject for v in verdicts}
    assert members == {f"203.0.113.{n}" for n in range(1, 31)}
    assert {v.detector for v in verdicts} == {DETECTOR}
    assert all(v.warranted and v.score == SCORE and v.scope == "ip" for v in verdicts)
    [incident] = {v.campaign.incident_id for v in verdicts if v.campaign}
    assert {v.campaign.family for v in verdicts if v.campaign} == {"credential-stuffing"}
    # every member of a round shares its explanation: route, behaviour, pace, agents
    reason = verdicts[-1].reasons[0]
    assert "/auth/sign-in" in reason, reason
    assert "new identity" in reason, reason
    explanation = verdicts[-1].explanation()
    assert explanation["incident_id"] == incident
    evidence = explanation["campaign"]
    assert evidence["route_template"] == "/auth/sign-in"
    assert evidence["behaviour"] == "rotating"
    assert evidence["user_agent_examples"] == ["curlish/7.1"]
    assert evidence["onset_spread_seconds"] <= 20
    assert changes[0].kind == "opened"
    assert changes[0].campaign.id == incident
    assert all(change.kind == "updated" for change in changes[1:])
    assert sum(len(change.joined) for change in changes) == 30


def test_a_slow_crawl_from_many_addresses_is_a_scraping_campaign() -> None:
    verdicts, _ = run_campaigns(CampaignDetector(), scrapers(12), 60_000)
    assert {v.subject for v in verdicts} == {f"192.0.2.{n}" for n in range(1, 13)}
    assert {v.campaign.family for v in verdicts if v.campaign} == {"scraping"}
    assert verdicts[0].explanation()["campaign"]["route_template"] == "/catalogue/*"


@pytest.mark.parametrize(
    "legit",
    [
        pytest.param(crowd(300), id="flash-crowd"),
        pytest.param(office(8, 400), id="carrier-nat"),
        pytest.param(shoppers(40), id="signed-in-shoppers"),
        pytest.param(households(200), id="households-sharing-an-address"),
        pytest.param(stuffers(4), id="too-few-sources"),
    ],
)
def test_crowds_offices_and_small_groups_are_no_campaign(legit: list[Row]) -> None:
    detector = CampaignDetector()
    verdicts, changes = run_campaigns(detector, legit, 60_000)
    assert verdicts == []
    assert changes == []
    assert detector.campaigns == []


def test_sources_that_join_later_join_the_same_campaign() -> None:
    detector = CampaignDetector()
    early = stuffers(10, until_ms=120_000)
    late = stuffers(5, onset_ms=70_000, until_ms=120_000, prefix="233.252.0")
    verdicts, changes = run_campaigns(detector, early + late, 120_000)
    assert len({v.campaign.incident_id for v in verdicts if v.campaign}) == 1
    assert {v.subject for v in verdicts} >= {f"233.252.0.{n}" for n in range(1, 6)}
    assert next(c.kind for c in changes) == "opened"


def browsers(count: int, *, until_ms: int) -> list[Row]:
    """Anonymous people reading catalogue pages since long before anything happened: one
    new page a minute each, the shape a crawler has too."""
    rows, page = [], 10_000
    for n in range(count):
        ip = f"198.51.100.{200 + n}"
        for ms in range(n * 1_000, until_ms, 60_000):
            page += 1
            rows.append(row(T0 + ms, ip, route=f"/catalogue/{page}", key=f"ip:{ip}"))
    return rows


def test_a_source_there_long_before_the_campaign_does_not_join_it() -> None:
    detector = CampaignDetector()
    crawl = [{**r, "ts": r["ts"] + 240_000} for r in scrapers(12, until_ms=60_000)]
    verdicts, _ = run_campaigns(detector, browsers(3, until_ms=300_000) + crawl, 300_000)
    blocked = {v.subject for v in verdicts}
    assert blocked == {f"192.0.2.{n}" for n in range(1, 13)}


def test_a_campaign_closes_once_its_members_went_quiet() -> None:
    settings = CampaignSettings(close_after_ms=60_000)
    detector = CampaignDetector(settings)
    _, changes = run_campaigns(detector, stuffers(10), 60_000)
    assert detector.campaigns
    closed: list[CampaignChange] = []
    for now in range(65_000, 200_000, 5_000):
        closed += detector.evaluate(T0 + now)[1]
    assert [c.kind for c in closed] == ["closed"]
    assert closed[0].campaign.id == changes[0].campaign.id
    assert detector.campaigns == []


def test_groups_that_started_apart_are_not_merged_by_timing() -> None:
    """DBSCAN's onset dimension: two bursts of sources ten minutes apart are two groups,
    so the later one is judged on its own once the first has ended."""
    detector = CampaignDetector(CampaignSettings(close_after_ms=30_000))
    first, _ = run_campaigns(detector, stuffers(8), 60_000)
    shifted = [{**r, "ts": r["ts"] + 600_000} for r in stuffers(8, prefix="233.252.0")]
    for now in range(65_000, 600_000, 5_000):
        detector.evaluate(T0 + now)  # the first campaign closes meanwhile
    second: list[Verdict] = []
    for now, chunk in rounds(shifted, 660_000, 5_000, start_ms=600_000):
        detector.book.observe(chunk)
        second += detector.evaluate(now)[0]
    first_ids = {v.campaign.incident_id for v in first if v.campaign}
    second_ids = {v.campaign.incident_id for v in second if v.campaign}
    assert len(first_ids) == len(second_ids) == 1
    assert first_ids != second_ids


def test_the_coordinated_detector_blocks_members_as_campaign_members() -> None:
    detector = CoordinatedDetector(AbuseDetector())
    verdicts = coordinated_verdicts(detector, stuffers(12) + crowd(30), 60_000, 5_000)
    campaign = [v for v in verdicts if v.detector == DETECTOR]
    assert {v.subject for v in campaign} == {f"203.0.113.{n}" for n in range(1, 13)}
    # no address gets a second verdict of its own beside its campaign's
    ips = [v.subject for v in verdicts if v.scope == "ip"]
    assert len(ips) == len(set(ips))
    changes = detector.take_changes()
    assert changes
    assert changes[0].kind == "opened"
    assert detector.take_changes() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_members", 1), ("min_route_share", 1.5), ("eps", 0.0), ("min_checks", 1)],
)
def test_bad_settings_are_refused_naming_the_value(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CampaignSettings(**{field: value})  # type: ignore[arg-type]
