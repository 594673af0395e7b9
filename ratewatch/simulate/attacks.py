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
from ratewatch.simulate.model import (
    ANONYMOUS_LIMIT,
    LOGIN_LIMIT,
    PARTNER_KEY_LIMIT,
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


def _ip_check(ip: str, route: str, user_agent: str) -> Check:
    """An anonymous request, limited per IP as an app limits traffic without an account."""
    limit, window = ANONYMOUS_LIMIT
    return Check(
        key=f"ip:{ip}", limit=limit, window=window, ip=ip, route=route, user_agent=user_agent
    )


def _victims(ctx: Context) -> Iterator[str]:
    """The accounts a stuffing list holds, each tried STUFFING_TRIES times in a row."""
    while True:
        yield from itertools.repeat(ctx.addresses.user_id(), STUFFING_TRIES)


def credential_stuffing(ctx: Context) -> Scenario:
    """Login attempts on many accounts from rotating IPs: each IP is used for a few seconds,
    all with the same user agent; most accounts are tried past their login limit."""
    rng, timeline = ctx.rng, ctx.timeline
    pool = [ctx.addresses.ip() for _ in range(ctx.count(STUFFING_POOL))]
    concurrent = min(ctx.count(STUFFING_CONCURRENT), len(pool))
    victims = _victims(ctx)
    user_agent = BROWSERS[0]
    limit, window = LOGIN_LIMIT

    def stuffer(ip: str) -> Behaviour:
        def attempt(rng: random.Random, t: float) -> Check:
            account = next(victims)
            return Check(
                key=f"login:{account}",
                limit=limit,
                window=window,
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
    limit, window = PARTNER_KEY_LIMIT

    def caller(ip: str, user_agent: str) -> Behaviour:
        def call(rng: random.Random, t: float) -> Check:
            return Check(
                key=key,
                limit=limit,
                window=window,
                ip=ip,
                route=rng.choice(_API_ROUTES),
                user_agent=user_agent,
            )

        return call

    owner_ip = ctx.addresses.ip()
    owner = caller(owner_ip, "acme-sync/2.3 python-httpx/0.27.0")
    # the owner is a legitimate caller of its own key until the leak: a block of the key
    # or of its server before then is a false positive
    owner_subject = Subject(
        "ip",
        owner_ip,
        "legit",
        "leaked-key",
        0.0,
        aliases=(("key", key),),
        until=timeline.attack_at,
    )
    actors = [Actor(owner_subject, Poisson(LEAK_OWNER_RATE), owner)]
    for _ in range(ctx.count(LEAK_IPS)):
        actors.append(
            Actor(
                subject,
                Poisson(LEAK_RATE),
                caller(ctx.addresses.ip(), rng.choice(TOOLS)),
                start=timeline.attack_at + rng.uniform(0, 5),
            )
        )
    return Scenario("leaked-key", "attack", describe(leaked_key), rng, actors)


def scraping(ctx: Context) -> Scenario:
    """Dozens of IPs, each just under the anonymous limit at a regular pace, together
    walking the catalogue /items/1, 2, 3, … with one headless-browser user agent."""
    rng, timeline = ctx.rng, ctx.timeline
    items = itertools.count(1)

    def scrape(ip: str) -> Behaviour:
        def fetch(rng: random.Random, t: float) -> Check:
            return _ip_check(ip, f"/items/{next(items)}", HEADLESS)

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
        return _ip_check(ip, rng.choice(routes), "Go-http-client/1.1")

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
    limit, window = USER_LIMIT

    def probe(rng: random.Random, t: float) -> Check:
        return Check(
            key=f"user:{next(numbers)}",
            limit=limit,
            window=window,
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
    limit, window = USER_LIMIT
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
            return Check(
                key=f"user:{account}",
                limit=limit,
                window=window,
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
