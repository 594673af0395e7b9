"""Decision rows of coordinated traffic and of the crowds it hides in, shared by the
campaign, target and incident tests: distributed credential stuffing, a brute force on one
account from many addresses, a launch crowd, an office behind NAT, everyday users."""

from __future__ import annotations

import random

from detectors.campaigns import CampaignChange, CampaignDetector
from detectors.verdict import Verdict
from tests.support.decision_frames import T0, Row, rounds, row

LOGIN = "/auth/sign-in"
WARM_MS = 90_000  # the attacks below begin after the detector watched the tenant this long


def stuffers(count: int, *, onset_ms: int = 0, every_ms: int = 8_000, until_ms: int = 60_000,
             prefix: str = "203.0.113", route: str = "/auth/sign-in") -> list[Row]:  # fmt: skip
    """``count`` addresses starting within 20 s of ``onset_ms``, each trying a new account
    every ``every_ms`` (0.125 checks/s: no address stands out)."""
    rng = random.Random(count)
    rows, account = [], 0
    for n in range(count):
        ip = f"{prefix}.{n + 1}"
        ms = onset_ms + rng.randrange(20_000)
        while ms < until_ms:
            account += 1
            rows.append(row(T0 + ms, ip, route=route, key=f"ip:{ip}", user_id=f"acct{account}",
                            agent="curlish/7.1", allowed=account % 3 != 0))  # fmt: skip
            ms += every_ms + rng.randrange(-2_000, 2_000)
    return rows


def crowd(count: int, *, until_ms: int = 60_000) -> list[Row]:
    """A launch: ``count`` new people, each signed in, mostly on the launch page."""
    rng = random.Random(7)
    rows = []
    for n in range(count):
        ip, user = f"198.51.100.{n + 1}", f"person{n}"
        for ms in range(rng.randrange(10_000), until_ms, 5_000):
            route = "/launch/today" if rng.random() < 0.7 else f"/page{rng.randrange(5)}"
            rows.append(row(T0 + ms, ip, route=route, key=f"user:{user}", user_id=user))
    return rows


def office(addresses: int, people: int, *, until_ms: int = 60_000) -> list[Row]:
    """An office: ``people`` signed in behind ``addresses`` NAT addresses, browsing."""
    rng = random.Random(11)
    rows = []
    for ms in range(0, until_ms, 200):
        user = f"staff{rng.randrange(people)}"
        ip = f"100.64.0.{hash(user) % addresses + 1}"
        route = rng.choice(["/home", "/docs", "/api/items", "/api/orders", "/search"])
        rows.append(row(T0 + ms, ip, route=route, key=f"user:{user}", user_id=user))
    return rows


def brute_force(
    count: int,
    *,
    every_ms: int = 700,
    in_key: bool = False,
    denied: bool = True,
    onset_ms: int = WARM_MS,
    until_ms: int = WARM_MS + 60_000,
    account: str = "alice",
) -> list[Row]:
    """``count`` addresses, each joining within 10 s of ``onset_ms``, trying passwords on
    one account every ``every_ms``; the account in ``user_id`` (each address its own key)
    or in the key."""
    rng = random.Random(count)
    rows = []
    for n in range(count):
        ip = f"203.0.113.{n + 1}"
        ms = onset_ms + rng.randrange(10_000)
        tries = 0
        while ms < until_ms:
            tries += 1
            no = denied and tries % 4 != 1
            if in_key:
                rows.append(
                    row(
                        T0 + ms,
                        ip,
                        route=LOGIN,
                        key=f"{LOGIN}:{account}",
                        agent="hydra/9",
                        allowed=not no,
                    )
                )
            else:
                rows.append(
                    row(
                        T0 + ms,
                        ip,
                        route=LOGIN,
                        key=f"ip:{ip}",
                        user_id=account,
                        agent="hydra/9",
                        allowed=not no,
                    )
                )
            ms += every_ms + rng.randrange(-200, 200)
    return rows


def people(count: int, *, until_ms: int = WARM_MS + 60_000) -> list[Row]:
    """The tenant's everyday users: each signed in from an address of their own, a check
    every 8 s (the population the pressed account is judged against)."""
    rows = []
    for n in range(count):
        ip, user = f"198.51.100.{n + 1}", f"person{n}"
        for ms in range(n * 100, until_ms, 8_000):
            rows.append(row(T0 + ms, ip, route="/home", key=f"user:{user}", user_id=user))
    return rows


def run_campaigns(
    detector: CampaignDetector, rows: list[Row], until_ms: int, step_ms: int = 5_000
) -> tuple[list[Verdict], list[CampaignChange]]:
    """Feed ``rows`` in and evaluate every ``step_ms``, as the detection loop does."""
    verdicts: list[Verdict] = []
    changes: list[CampaignChange] = []
    for now, chunk in rounds(rows, until_ms, step_ms):
        detector.book.observe(chunk)
        found, changed = detector.evaluate(now)
        verdicts += found
        changes += changed
    return verdicts, changes
