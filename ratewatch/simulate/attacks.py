"""Attacks, each starting at ``--attack-at``, and the subject a detector should block.

- credential stuffing: the source IPs (the targeted accounts are victims, not subjects);
- leaked key: the key; distributed scraping, single-IP burst, key enumeration: the IPs;
- low-and-slow: each bot's IP, or its account (``user_id``, key ``user:<id>``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from ratewatch.client import Check
from ratewatch.simulate.agents import BROWSERS, HEADLESS, TOOLS, browser
from ratewatch.simulate.attack_checks import (
    anonymous_check,
    catalogue_walk,
    key_owner,
    limited_check,
    partner_key_calls,
    stuffing_list,
)
from ratewatch.simulate.model import (
    LOGIN_LIMIT,
    USER_LIMIT,
    Actor,
    Behaviour,
    Context,
    Poisson,
    Regular,
    Scenario,
    Subject,
    describe,
)

STUFFING_POOL = 200  # source IPs, used in turn (again from the first when exhausted)
STUFFING_CONCURRENT = 5  # IPs attacking at once
STUFFING_DWELL = 8.0  # seconds each IP is used
STUFFING_RATE = 4.0  # login attempts per second per IP
STUFFING_TRIES = 8  # attempts per account (password variants, retries after a denial)
LEAK_IPS = 40
LEAK_RATE = 0.5  # requests per second per IP
LEAK_OWNER_RATE = 1.0
SCRAPERS = 30
SCRAPE_INTERVAL = 1.25  # seconds: under the anonymous limit of 60 a minute
BURST_RATE = 200.0
BURST_SECONDS = 30.0
ENUMERATION_RATE = 10.0
LOW_AND_SLOW_BOTS = 5
LOW_AND_SLOW_PER_MINUTE = 95  # just under the per-user limit of 100

_API_ROUTES = ("/api/v1/orders", "/api/v1/products", "/api/v1/customers", "/api/v1/inventory")


def credential_stuffing(ctx: Context) -> Scenario:
    """Login attempts on many accounts from rotating IPs: each IP is used for a few seconds,
    all with the same user agent; most accounts are tried past their login limit."""
    rng, timeline = ctx.rng, ctx.timeline
    pool = [ctx.addresses.ip() for _ in range(ctx.count(STUFFING_POOL))]
    concurrent = min(ctx.count(STUFFING_CONCURRENT), len(pool))
    victims = stuffing_list(ctx.addresses, STUFFING_TRIES)
    user_agent = BROWSERS[0]

    def stuffer(ip: str) -> Behaviour:
        def attempt(rng: random.Random, t: float) -> Check:
            account = next(victims)
            return limited_check(
                f"login:{account}",
                LOGIN_LIMIT,
                ip=ip,
                route="/login",
                user_agent=user_agent,
                user_id=account,
            )

        return attempt

    subjects: dict[str, Subject] = {}
    actors = []
    # the n-th use of an IP starts n·dwell/concurrent after the onset: `concurrent` overlap
    for n in itertools.count():
        start = timeline.attack_at + n * STUFFING_DWELL / concurrent
        if start >= timeline.duration:
            break
        ip = pool[n % len(pool)]
        subject = subjects.setdefault(
            ip, Subject("ip", ip, "attack", "credential-stuffing", round(start, 3))
        )
        actors.append(
            Actor(
                subject,
                Regular(1 / STUFFING_RATE, jitter=0.2),
                stuffer(ip),
                start=start,
                end=start + STUFFING_DWELL,
            )
        )
    return Scenario("credential-stuffing", "attack", describe(credential_stuffing), rng, actors)


def leaked_key(ctx: Context) -> Scenario:
    """An integration's API key, used by its owner from one server all along, leaks and is
    used from dozens of IPs with assorted HTTP tools."""
    rng, timeline = ctx.rng, ctx.timeline
    key = "key:pk_live_" + "".join(rng.choices("0123456789abcdef", k=24))
    subject = Subject("key", key, "attack", "leaked-key", timeline.attack_at)
    owner_ip = ctx.addresses.ip()
    owner = partner_key_calls(key, owner_ip, "acme-sync/2.3 python-httpx/0.27.0", _API_ROUTES)
    owner_subject = key_owner(key, owner_ip, "leaked-key", timeline.attack_at)
    actors = [Actor(owner_subject, Poisson(LEAK_OWNER_RATE), owner)]
    for _ in range(ctx.count(LEAK_IPS)):
        actors.append(
            Actor(
                subject,
                Poisson(LEAK_RATE),
                partner_key_calls(key, ctx.addresses.ip(), rng.choice(TOOLS), _API_ROUTES),
                start=timeline.attack_at + rng.uniform(0, 5),
            )
        )
    return Scenario("leaked-key", "attack", describe(leaked_key), rng, actors)


def scraping(ctx: Context) -> Scenario:
    """Dozens of IPs, each just under the anonymous limit at a regular pace, together
    walking the catalogue /items/1, 2, 3, … with one headless-browser user agent."""
    rng, timeline = ctx.rng, ctx.timeline
    pages = catalogue_walk("/items")

    def scrape(ip: str) -> Behaviour:
        def fetch(rng: random.Random, t: float) -> Check:
            return anonymous_check(ip, next(pages), HEADLESS)

        return fetch

    actors = []
    for _ in range(ctx.count(SCRAPERS)):
        ip = ctx.addresses.ip()
        start = round(timeline.attack_at + rng.uniform(0, 2), 3)
        actors.append(
            Actor(
                Subject("ip", ip, "attack", "scraping", start),
                Regular(SCRAPE_INTERVAL, jitter=0.05),
                scrape(ip),
                start=start,
            )
        )
    return Scenario("scraping", "attack", describe(scraping), rng, actors)


def burst(ctx: Context) -> Scenario:
    """One IP fires 200 requests a second for 30 seconds."""
    rng, timeline = ctx.rng, ctx.timeline
    ip = ctx.addresses.ip()
    routes = ("/search", "/", "/items/1", "/api/notifications")

    def hit(rng: random.Random, t: float) -> Check:
        return anonymous_check(ip, rng.choice(routes), "Go-http-client/1.1")

    actor = Actor(
        Subject("ip", ip, "attack", "burst", timeline.attack_at),
        Regular(1 / BURST_RATE, jitter=0.3),
        hit,
        start=timeline.attack_at,
        end=timeline.attack_at + BURST_SECONDS,
    )
    return Scenario("burst", "attack", describe(burst), rng, [actor])


def key_enumeration(ctx: Context) -> Scenario:
    """One IP tries keys user:<n>, user:<n+1>, … ten a second."""
    rng, timeline = ctx.rng, ctx.timeline
    ip = ctx.addresses.ip()
    numbers = itertools.count(rng.randrange(10**7, 9 * 10**7))

    def probe(rng: random.Random, t: float) -> Check:
        return limited_check(
            f"user:{next(numbers)}",
            USER_LIMIT,
            ip=ip,
            route="/api/account",
            user_agent="python-requests/2.31.0",
        )

    actor = Actor(
        Subject("ip", ip, "attack", "key-enumeration", timeline.attack_at),
        Regular(1 / ENUMERATION_RATE, jitter=0.1),
        probe,
        start=timeline.attack_at,
    )
    return Scenario("key-enumeration", "attack", describe(key_enumeration), rng, [actor])


def low_and_slow(ctx: Context) -> Scenario:
    """A few bots, each with its own IP and account, harvest prices at 95 requests a minute
    (the limit is 100) like clockwork, until the end of the run."""
    rng, timeline = ctx.rng, ctx.timeline
    actors = []
    for _ in range(ctx.count(LOW_AND_SLOW_BOTS)):
        ip, account, user_agent = ctx.addresses.ip(), ctx.addresses.user_id(), browser(rng, 0)
        pages = itertools.count(1)

        def harvest(
            rng: random.Random,
            t: float,
            ip: str = ip,
            account: str = account,
            user_agent: str = user_agent,
            pages: Iterator[int] = pages,
        ) -> Check:
            return limited_check(
                f"user:{account}",
                USER_LIMIT,
                ip=ip,
                route=f"/api/prices?page={next(pages)}",
                user_agent=user_agent,
                user_id=account,
            )

        subject = Subject(
            "ip",
            ip,
            "attack",
            "low-and-slow",
            timeline.attack_at,
            aliases=(("user_id", account), ("key", f"user:{account}")),
        )
        actors.append(
            Actor(
                subject,
                Regular(60 / LOW_AND_SLOW_PER_MINUTE, jitter=0.02, phase=rng.random()),
                harvest,
                start=timeline.attack_at,
            )
        )
    return Scenario("low-and-slow", "attack", describe(low_and_slow), rng, actors)
