"""What attackers send, shared by the fixed attack scenarios (``attacks``) and the attack
families with drawn parameters (``families.attacks``): checks under an application's
limits, a stuffing list of accounts, the catalogue a crawler walks, and a leaked partner
key's callers and owner."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

from ratewatch.client import Check
from ratewatch.simulate.model import (
    ANONYMOUS_LIMIT,
    PARTNER_KEY_LIMIT,
    Addresses,
    Behaviour,
    Subject,
)


def limited_check(
    key: str,
    limit: tuple[int, int],
    *,
    ip: str,
    route: str,
    user_agent: str,
    user_id: str | None = None,
) -> Check:
    """A check of ``key`` under ``limit`` (requests, window in seconds)."""
    requests, window = limit
    return Check(
        key=key,
        limit=requests,
        window=window,
        ip=ip,
        route=route,
        user_agent=user_agent,
        user_id=user_id,
    )


def anonymous_check(ip: str, route: str, user_agent: str, user_id: str | None = None) -> Check:
    """A request limited per IP, as an app limits traffic without an account (``user_id``:
    an account the request names all the same, a tried credential)."""
    return limited_check(
        f"ip:{ip}", ANONYMOUS_LIMIT, ip=ip, route=route, user_agent=user_agent, user_id=user_id
    )


def stuffing_list(addresses: Addresses, tries: int) -> Iterator[str]:
    """The accounts a credential-stuffing list holds, each tried ``tries`` times in a row
    (password variants, retries after a denial)."""
    while True:
        yield from itertools.repeat(addresses.user_id(), tries)


def catalogue_walk(catalogue: str) -> Iterator[str]:
    """The catalogue's pages in order, ``<catalogue>/1``, ``/2``, …, as a crawler asks
    for them."""
    return (f"{catalogue}/{item}" for item in itertools.count(1))


def partner_key_calls(key: str, ip: str, user_agent: str, routes: Sequence[str]) -> Behaviour:
    """One client's calls with the partner key ``key``, each on one of ``routes``."""

    def call(rng: random.Random, t: float) -> Check:
        return limited_check(
            key, PARTNER_KEY_LIMIT, ip=ip, route=rng.choice(routes), user_agent=user_agent
        )

    return call


def key_owner(key: str, ip: str, scenario: str, leaked_at: float) -> Subject:
    """The server that uses its own ``key`` legitimately until the key leaks: a block of
    the key or of that server before ``leaked_at`` is a false positive."""
    return Subject("ip", ip, "legit", scenario, 0.0, aliases=(("key", key),), until=leaked_at)
