"""A ``RateLimitRequest``'s descriptors as checks (docs/gateways.md gives the rules).

Each descriptor is one of:

* a *policy* descriptor: an entry ``policy`` names the tenant's policy, the other entries,
  in order, form the key, which is also the identifier its overrides match;
* a *limit* descriptor: no ``policy`` entry but Envoy's own ``limit`` override
  (``requests_per_unit`` per ``unit``): its entries form the key, the override is the limit;
* an *unlimited* descriptor: neither.  As in Envoy's reference service, a descriptor no
  limit applies to is answered ``OK`` without a limit and decides nothing.

The key is the request's domain and the entries, ``domain|key=value|key=value``, so two
domains never share a counter (a descriptor of a policy alone is keyed by its domain: one
counter for every request, a global limit).  An entry ``remote_address`` (Envoy's action
of that name) is also the check's client IP, so blocks by IP apply and the detectors see
it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from limiter.algorithms import MAX_LIMIT_WINDOW, Algorithm
from limiter.errors import InvalidInput
from limiter.http.schemas import MAX_COUNT, MAX_KEY_LENGTH
from limiter.state.blocks import normalize_ip
from limiter.store.base import Check

POLICY_ENTRY = "policy"
REMOTE_ADDRESS_ENTRY = "remote_address"
MAX_DESCRIPTORS = 64
MAX_DOMAIN_LENGTH = 128

# envoy.type.v3.RateLimitUnit (a descriptor's own limit) -> seconds; a month and a year are
# 30 and 365 days, as in Envoy's reference service.  UNKNOWN (0) is no unit.
UNIT_SECONDS = {1: 1, 2: 60, 3: 3600, 4: 86_400, 5: 30 * 86_400, 6: 365 * 86_400}


class InvalidRequest(InvalidInput):
    """A descriptor (or the request) cannot be decided; answered INVALID_ARGUMENT."""


class Planned(NamedTuple):
    """One descriptor as understood.  ``check``: a limit descriptor's check; None for an
    unlimited descriptor and for a policy descriptor, whose checks the policy's limits make
    (of ``key``, ``cost`` and ``ip``)."""

    key: str
    cost: int
    ip: str | None
    policy: str | None
    check: Check | None


def plan(
    request: Any,
    tenant: str,
    segment: str | None,
    algorithm: Algorithm,
    started_ns: int,
) -> list[Planned]:
    """Every descriptor of ``request`` (an Envoy ``RateLimitRequest``), in order.

    Raises InvalidRequest naming the descriptor that cannot be decided."""
    domain: str = request.domain
    if not domain or len(domain) > MAX_DOMAIN_LENGTH:
        raise InvalidRequest(f"the domain must be 1-{MAX_DOMAIN_LENGTH} characters")
    descriptors = request.descriptors
    if not descriptors:
        raise InvalidRequest("the request has no descriptor")
    if len(descriptors) > MAX_DESCRIPTORS:
        raise InvalidRequest(
            f"the request has {len(descriptors)} descriptors: at most {MAX_DESCRIPTORS}"
        )
    # proto3: an unset hits_addend reads 0, and Envoy means 1 by it
    default_cost: int = request.hits_addend or 1
    return [
        _plan_one(descriptor, index, domain, tenant, segment, algorithm, started_ns, default_cost)
        for index, descriptor in enumerate(descriptors)
    ]


def _plan_one(
    descriptor: Any,
    index: int,
    domain: str,
    tenant: str,
    segment: str | None,
    algorithm: Algorithm,
    started_ns: int,
    default_cost: int,
) -> Planned:
    where = f"descriptors[{index}]"
    if not descriptor.entries:
        raise InvalidRequest(f"{where} has no entry")
    policy: str | None = None
    ip: str | None = None
    parts = [domain]
    for entry in descriptor.entries:
        name: str = entry.key
        value: str = entry.value
        if not name:
            raise InvalidRequest(f"{where} has an entry without a key")
        if name == POLICY_ENTRY:
            if policy is not None:
                raise InvalidRequest(f"{where} names a policy twice")
            if not value:
                raise InvalidRequest(f"{where}: the policy entry has no value")
            policy = value
            continue
        if name == REMOTE_ADDRESS_ENTRY:
            try:
                ip = normalize_ip(value)
            except InvalidInput as exc:
                raise InvalidRequest(f"{where}.remote_address: {exc}") from None
        parts.append(f"{name}={value}")
    key = "|".join(parts)
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"{where}: the key (domain and entries) is {len(key)} characters: at most "
            f"{MAX_KEY_LENGTH}"
        )
    cost = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_cost
    if cost > MAX_COUNT:
        raise InvalidRequest(f"{where}: hits_addend {cost} exceeds {MAX_COUNT}")
    if policy is not None:
        # the policy names the limits; the check is made of it when it is resolved
        return Planned(key, cost, ip, policy, None)
    if not descriptor.HasField("limit"):
        return Planned(key, cost, ip, None, None)
    limit: int = descriptor.limit.requests_per_unit
    seconds = UNIT_SECONDS.get(descriptor.limit.unit)
    if seconds is None:
        raise InvalidRequest(f"{where}.limit has no unit (SECOND, MINUTE, HOUR, DAY, ...)")
    if not 1 <= limit <= MAX_COUNT:
        raise InvalidRequest(
            f"{where}.limit: requests_per_unit {limit} is not within 1-{MAX_COUNT}"
        )
    if limit * seconds > MAX_LIMIT_WINDOW:
        raise InvalidRequest(
            f"{where}.limit: {limit} per {seconds}s exceeds {MAX_LIMIT_WINDOW} (limit·seconds)"
        )
    check = Check(
        tenant, key, algorithm, limit, seconds * 1000, cost, ip, None, None, None, segment,
        started_ns,
    )  # fmt: skip
    return Planned(key, cost, ip, None, check)
