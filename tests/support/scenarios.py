"""Labelled synthetic decision traffic: legitimate patterns and attacks.

Each generator returns a ``Traffic``: decisions (``FRAME_SCHEMA`` columns, sorted by time)
plus the subjects that must be blocked (``attackers``) and those that must never be
(``legit``).  The numbers aim at what real traffic looks like to a rate limiter: humans
arrive as Poisson processes at a few checks a minute (lognormal across users), browse a
catalogue of routes with Zipf popularity, share an IP in a minority of households, and
hardly ever meet their limit; attackers are faster, narrower, more regular or more denied,
each in its own way.  Everything is vectorised numpy/polars, so the benchmark can generate
millions of decisions, and seeded, so a run is reproducible.

Legitimate: ``steady_users``, ``diurnal_ramp``, ``flash_crowd``, ``nat_customer``.
Attacks: ``credential_stuffing``, ``leaked_key``, ``distributed_scraping``,
``single_ip_burst``, ``key_enumeration``, ``low_and_slow``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.features import MINUTE_MS
from detectors.verdict import Scope
from tests.support import synthetic
from tests.support.synthetic import BOT_AGENT, USER_AGENTS, Ints

Subjects = frozenset[tuple[Scope, str]]


@dataclass(frozen=True)
class Traffic:
    name: str
    frame: pl.DataFrame
    onset_ms: int
    attackers: Subjects = frozenset()
    legit: Subjects = frozenset()


def merge(*traffics: Traffic) -> pl.DataFrame:
    """All decisions of ``traffics`` in time order."""
    return pl.concat([t.frame for t in traffics]).sort("ts")


def subjects_of(frame: pl.DataFrame) -> Subjects:
    """Every (scope, value) that appears in ``frame``."""
    found: set[tuple[Scope, str]] = set()
    for scope in ("ip", "key", "user_id"):
        values = frame[scope].drop_nulls().unique().to_list()
        found.update((scope, value) for value in values)
    return frozenset(found)


# --- legitimate patterns -------------------------------------------------------------------


def steady_users(
    rng: np.random.Generator,
    tenant: str,
    start_ms: int,
    end_ms: int,
    *,
    users: int = 400,
    tag: str = "u",
    rate_median: float = 3.0,
    rate_sigma: float = 0.8,
) -> Traffic:
    """``users`` humans active throughout, at lognormal rates (median 3/min); about 8% of
    them share their household's IP with another."""
    people = synthetic.people(
        rng, users, tag, ip_prefix=10, rate_median=rate_median, sigma=rate_sigma
    )
    people = people.with_columns(start=pl.lit(start_ms), end=pl.lit(end_ms))
    frame = synthetic.human_events(rng, tenant, people)
    return Traffic("steady_users", frame, start_ms, legit=subjects_of(frame))


def diurnal_ramp(
    rng: np.random.Generator,
    tenant: str,
    start_ms: int,
    end_ms: int,
    *,
    users: int = 400,
    low: float = 0.4,
    high: float = 1.6,
) -> Traffic:
    """Morning: users arrive over the first 70% of the period and everyone's pace rises
    linearly from ``low`` to ``high`` times their usual rate."""
    people = synthetic.people(rng, users, "d", ip_prefix=11, rate_median=3.0, sigma=0.8)
    span = end_ms - start_ms
    starts = start_ms + (rng.random(users) * 0.7 * span).astype(np.int64)
    people = people.with_columns(start=pl.Series(starts), end=pl.lit(end_ms))

    def pace(ts: Ints) -> npt.NDArray[np.float64]:
        return (low + (high - low) * (ts - start_ms) / span) / high

    people = people.with_columns(pl.col("rate") * high)
    frame = synthetic.human_events(rng, tenant, people, thinning=pace)
    return Traffic("diurnal_ramp", frame, start_ms, legit=subjects_of(frame))


def flash_crowd(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    users: int = 400,
    arrival_ms: int = MINUTE_MS,
    duration_ms: int = 3 * MINUTE_MS,
) -> Traffic:
    """A launch: ``users`` new people, each with their own IP, arrive within
    ``arrival_ms`` and browse normally (a few checks a minute, mostly the launch routes)."""
    people = synthetic.people(
        rng, users, "fc", ip_prefix=172, rate_median=3.0, sigma=0.6, shared=0.0
    )
    starts = onset_ms + (rng.random(users) * arrival_ms).astype(np.int64)
    people = people.with_columns(start=pl.Series(starts), end=pl.lit(onset_ms + duration_ms))
    frame = synthetic.human_events(rng, tenant, people)
    return Traffic("flash_crowd", frame, onset_ms, legit=subjects_of(frame))


def nat_customer(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    users: int = 200,
    duration_ms: int = 3 * MINUTE_MS,
    ip: str = "203.0.113.10",
    own_routes: float = 0.0,
) -> Traffic:
    """A big customer behind one NAT address starts sending: ``users`` people with their
    own keys and browsers, ~800 checks/min in total from one IP, each key normal.  A share
    ``own_routes`` of their checks go to the customer's own part of the application, which
    nobody outside the NAT uses (``/app/reports``, …), half of them to a record of their
    own (``/app/invoices/3251``)."""
    people = synthetic.people(rng, users, "nat", ip_prefix=203, rate_median=4.0, sigma=0.5)
    people = people.with_columns(
        ip=pl.lit(ip), start=pl.lit(onset_ms), end=pl.lit(onset_ms + duration_ms)
    )
    frame = synthetic.human_events(rng, tenant, people)
    if own_routes > 0:
        size = frame.height
        pages = np.array(["/app/reports", "/app/invoices", "/app/projects", "/app/team"])
        page = pages[rng.integers(0, len(pages), size)]
        record = np.char.add(np.char.add(page, "/"), rng.integers(1, 5000, size).astype(str))
        own = np.where(rng.random(size) < 0.5, record, page)
        frame = frame.with_columns(
            route=pl.when(pl.Series(rng.random(size) < own_routes))
            .then(pl.Series(own))
            .otherwise(pl.col("route"))
        )
    return Traffic("nat_customer", frame, onset_ms, legit=subjects_of(frame))


# --- attacks -------------------------------------------------------------------------------


def credential_stuffing(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    victims: list[str],
    cohorts: int = 5,
    cohort_size: int = 15,
    cohort_every_ms: int = 10_000,
    rate_per_min: float = 40.0,
    deny_ratio: float = 0.92,
) -> Traffic:
    """Rotating IPs, each alive 20-30 s, trying one user id after another on the login
    route with the same client; 30% of the ids are real users' (``victims``).  A new
    cohort of ``cohort_size`` IPs starts every ``cohort_every_ms``; with the defaults the
    last one starts 40 s after the onset, so every IP has shown itself for a while by the
    one-minute mark (an IP that starts a second before it cannot be judged by then)."""
    n = cohorts * cohort_size
    starts = onset_ms + np.repeat(np.arange(cohorts) * cohort_every_ms, cohort_size)
    starts = starts + (rng.random(n) * 2_000).astype(np.int64)
    lives = (20_000 + rng.random(n) * 10_000).astype(np.int64)
    owner, ts = synthetic.poisson(rng, np.full(n, rate_per_min), starts, starts + lives)
    ips = synthetic.ips(181, n)
    size = len(ts)
    real = rng.random(size) < 0.3
    pool = np.array(victims or ["nobody"], dtype=object)
    invented = np.char.add("guess-", rng.integers(0, 10**9, size).astype(str))
    user_ids = np.where(real, pool[rng.integers(0, len(pool), size)], invented).astype(str)
    denied = rng.random(size) < deny_ratio
    frame = synthetic.frame(
        tenant,
        ts,
        key=np.char.add("login:", user_ids),
        ip=ips[owner],
        user_id=user_ids,
        route=np.full(size, "/api/login"),
        user_agent=np.full(size, "python-requests/2.31.0"),
        allowed=~denied,
        remaining=np.where(denied, 0, rng.integers(0, 5, size)),
        reason=np.where(denied, "limit", "ok"),
    )
    attackers: Subjects = frozenset(("ip", ip) for ip in np.unique(ips[owner]).tolist())
    return Traffic("credential_stuffing", frame, onset_ms, attackers=attackers)


def leaked_key(
    rng: np.random.Generator,
    tenant: str,
    start_ms: int,
    onset_ms: int,
    *,
    ips: int = 40,
    rate_per_min: float = 4.0,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """A server key used from one office IP since ``start_ms``; from ``onset_ms`` it is
    also used from ``ips`` addresses around the world, each at a human pace."""
    key = "srv-key-leaked"
    owner_n, owner_ts = synthetic.poisson(
        rng, np.array([6.0]), np.array([start_ms]), np.array([onset_ms + duration_ms])
    )
    starts = onset_ms + (rng.random(ips) * 20_000).astype(np.int64)
    thief, thief_ts = synthetic.poisson(
        rng, np.full(ips, rate_per_min), starts, np.full(ips, onset_ms + duration_ms)
    )
    addresses = np.concatenate(
        [np.full(len(owner_ts), "198.18.0.1"), synthetic.ips(45, ips)[thief]]
    )
    ts = np.concatenate([owner_ts, thief_ts])
    size = len(ts)
    agents = np.array(["curl/8.4.0", "python-httpx/0.27.0", "Go-http-client/2.0"])
    user_agent = np.concatenate(
        [np.full(owner_n.shape[0], "acme-backend/3.2"), agents[rng.integers(0, 3, thief.shape[0])]]
    )
    frame = synthetic.frame(
        tenant,
        ts,
        key=np.full(size, key),
        ip=addresses,
        user_id=np.full(size, None),
        route=synthetic.routes(rng, size),
        user_agent=user_agent,
        allowed=np.ones(size, dtype=bool),
        remaining=np.full(size, 500),
        reason=np.full(size, "ok"),
    )
    return Traffic(
        "leaked_key",
        frame,
        onset_ms,
        attackers=frozenset({("key", key)}),
        legit=frozenset({("ip", "198.18.0.1")}),
    )


def distributed_scraping(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    ips: int = 40,
    rate_per_min: float = 30.0,
    jitter: float = 0.15,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """``ips`` addresses, each with its own account, walking the product catalogue in
    order on a timer (± ``jitter``), all with the same browser string."""
    starts = onset_ms + (rng.random(ips) * 5_000).astype(np.int64)
    owner, ts, step = synthetic.periodic(
        rng, ips, rate_per_min, jitter, starts, onset_ms + duration_ms
    )
    size = len(ts)
    addresses = synthetic.ips(91, ips)
    routes = synthetic.named("/api/products/", owner * 100_000 + step)
    frame = synthetic.frame(
        tenant,
        ts,
        key=synthetic.named("scr-key-", owner),
        ip=addresses[owner],
        user_id=synthetic.named("scr-user-", owner),
        route=routes,
        user_agent=np.full(size, BOT_AGENT),
        allowed=np.ones(size, dtype=bool),
        remaining=np.maximum(60 - step % 60 - 1, 0),
        reason=np.full(size, "ok"),
    )
    attackers: Subjects = frozenset(("ip", ip) for ip in addresses.tolist())
    return Traffic("distributed_scraping", frame, onset_ms, attackers=attackers)


def single_ip_burst(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    rate_per_sec: float = 50.0,
    limit: int = 600,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """One address hammering one route at ``rate_per_sec`` against a limit of ``limit``
    per minute: most of it denied."""
    _, ts = synthetic.poisson(
        rng, np.array([rate_per_sec * 60]), np.array([onset_ms]), np.array([onset_ms + duration_ms])
    )
    size = len(ts)
    frame = synthetic.frame(
        tenant,
        ts,
        key=np.full(size, "burst-key"),
        ip=np.full(size, "66.249.1.1"),
        user_id=np.full(size, None),
        route=np.full(size, "/api/search"),
        user_agent=np.full(size, "Go-http-client/1.1"),
        allowed=np.ones(size, dtype=bool),
        remaining=np.zeros(size, dtype=np.int64),
        reason=np.full(size, "ok"),
    )
    frame = synthetic.fixed_window(frame, limit)
    return Traffic("single_ip_burst", frame, onset_ms, attackers=frozenset({("ip", "66.249.1.1")}))


def key_enumeration(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    real_keys: list[str],
    rate_per_sec: float = 5.0,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """One address presenting a new guessed key on every check; 5% are real keys."""
    _, ts = synthetic.poisson(
        rng, np.array([rate_per_sec * 60]), np.array([onset_ms]), np.array([onset_ms + duration_ms])
    )
    size = len(ts)
    hit = rng.random(size) < 0.05
    pool = np.array(real_keys or ["none"], dtype=object)
    guessed = np.char.add("rk_", rng.integers(0, 16**10, size).astype(str))
    keys = np.where(hit, pool[rng.integers(0, len(pool), size)], guessed).astype(str)
    frame = synthetic.frame(
        tenant,
        ts,
        key=keys,
        ip=np.full(size, "77.88.5.5"),
        user_id=np.full(size, None),
        route=np.full(size, "/api/me"),
        user_agent=np.full(size, "python-requests/2.31.0"),
        allowed=hit,
        remaining=np.where(hit, 25, 0),
        reason=np.where(hit, "ok", "unknown_key"),
    )
    return Traffic("key_enumeration", frame, onset_ms, attackers=frozenset({("ip", "77.88.5.5")}))


def low_and_slow(
    rng: np.random.Generator,
    tenant: str,
    start_ms: int,
    onset_ms: int,
    *,
    subjects: int = 5,
    rate_per_min: float = 55.0,
    jitter: float = 0.03,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """Accounts that browsed like humans (4/min) since ``start_ms`` and from ``onset_ms``
    run a timer just under their token-bucket limit: allowed, but at ``remaining == 0``."""
    end = onset_ms + duration_ms
    owner_a, ts_a = synthetic.poisson(
        rng, np.full(subjects, 4.0), np.full(subjects, start_ms), np.full(subjects, onset_ms)
    )
    owner_b, ts_b, _ = synthetic.periodic(
        rng, subjects, rate_per_min, jitter, np.full(subjects, onset_ms), end
    )
    owner = np.concatenate([owner_a, owner_b])
    ts = np.concatenate([ts_a, ts_b])
    size = len(ts)
    attacking = np.concatenate([np.zeros(ts_a.shape[0], bool), np.ones(ts_b.shape[0], bool)])
    at_zero = attacking & (rng.random(size) < 0.9)
    denied = attacking & (rng.random(size) < 0.03)
    ips, keys = synthetic.ips(88, subjects), np.char.add("ls-key-", np.arange(subjects).astype(str))
    frame = synthetic.frame(
        tenant,
        ts,
        key=keys[owner],
        ip=ips[owner],
        user_id=np.char.add("ls-user-", owner.astype(str)),
        route=pl.select(
            pl.when(pl.Series(attacking))
            .then(pl.lit("/api/search"))
            .otherwise(synthetic.routes(rng, size))
        ).to_series(),
        user_agent=np.full(size, USER_AGENTS[0]),
        allowed=~denied,
        remaining=np.where(at_zero | denied, 0, np.where(attacking, 1, 40)),
        reason=np.where(denied, "limit", "ok"),
    )
    attackers: Subjects = frozenset(
        [("ip", ip) for ip in ips.tolist()] + [("key", k) for k in keys.tolist()]
    )
    return Traffic("low_and_slow", frame, onset_ms, attackers=attackers)


def sequential_key_enumeration(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    rate_per_sec: float = 10.0,
    limit: int = 100,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """One address walking keys ``user:<n>``, ``user:<n+1>``, … on a timer, each used once.
    Every key is a fresh counter to the limiter, so (unlike ``key_enumeration``) nearly
    everything is *allowed*: only the churn of keys gives it away."""
    _, ts, step = synthetic.periodic(
        rng, 1, rate_per_sec * 60, 0.1, np.array([onset_ms]), onset_ms + duration_ms
    )
    size = len(ts)
    first = int(rng.integers(10**7, 9 * 10**7))
    frame = synthetic.frame(
        tenant,
        ts,
        key=synthetic.named("user:", first + step),
        ip=np.full(size, "77.88.6.6"),
        user_id=np.full(size, None),
        route=np.full(size, "/api/account"),
        user_agent=np.full(size, "python-requests/2.31.0"),
        allowed=np.ones(size, dtype=bool),
        remaining=np.full(size, limit - 1),
        reason=np.full(size, "ok"),
    )
    return Traffic(
        "sequential_key_enumeration", frame, onset_ms, attackers=frozenset({("ip", "77.88.6.6")})
    )


def rotating_credential_stuffing(
    rng: np.random.Generator,
    tenant: str,
    onset_ms: int,
    *,
    concurrent: int = 5,
    dwell_ms: int = 8_000,
    rate_per_sec: float = 4.0,
    tries: int = 7,
    login_limit: int = 5,
    duration_ms: int = MINUTE_MS,
) -> Traffic:
    """Credential stuffing as a careful botnet runs it: each IP lives only ``dwell_ms``
    (``concurrent`` at a time, a new one every ``dwell_ms / concurrent``), sending
    ``rate_per_sec`` login attempts with one browser string; the accounts of the list are
    tried ``tries`` times each, in turn across the live IPs, against a login limit of
    ``login_limit`` a minute per account, so only about a quarter is denied (10-45% per IP)
    and each IP sees each account only once or twice."""
    every = dwell_ms // concurrent
    n = max(duration_ms // every, 1)
    starts = onset_ms + np.arange(n, dtype=np.int64) * every
    owner, ts, _ = synthetic.periodic(
        rng, n, rate_per_sec * 60, 0.2, starts, onset_ms + duration_ms
    )
    alive = ts < starts[owner] + dwell_ms
    owner, ts = owner[alive], ts[alive]
    order = np.argsort(ts, kind="stable")
    owner, ts = owner[order], ts[order]
    size = len(ts)
    accounts = synthetic.named("acct-", np.arange(size) // tries)
    addresses = synthetic.ips(185, n)
    frame = synthetic.frame(
        tenant,
        ts,
        key=np.char.add("login:", accounts),
        ip=addresses[owner],
        user_id=accounts,
        route=np.full(size, "/login"),
        user_agent=np.full(size, USER_AGENTS[0]),
        allowed=np.ones(size, dtype=bool),
        remaining=np.zeros(size, dtype=np.int64),
        reason=np.full(size, "ok"),
    )
    frame = synthetic.fixed_window(frame, login_limit)
    attackers: Subjects = frozenset(("ip", ip) for ip in np.unique(addresses[owner]).tolist())
    return Traffic("rotating_credential_stuffing", frame, onset_ms, attackers=attackers)
