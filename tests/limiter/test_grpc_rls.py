"""Envoy's rate limit service: a real ``ratewatch serve --grpc-port`` asked by a grpc.aio
client built from the generated Envoy protos, as Envoy's ratelimit filter asks it."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub
from envoy.type.v3.ratelimit_unit_pb2 import RateLimitUnit
from google.protobuf.wrappers_pb2 import UInt64Value
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from limiter.policies.model import parse_rule
from limiter.policies.store import PolicyStore
from stream.events import DecisionEvent, decode_entry
from stream.handlers import entry_record
from tests.support.credentials import create_key, create_signed_key
from tests.support.polling import eventually_awaited
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PREFIX = "rwgrpc"
OK = RateLimitResponse.OK
OVER_LIMIT = RateLimitResponse.OVER_LIMIT
MINUTE = RateLimitResponse.RateLimit.MINUTE
# failed authentications the module's limiter allows from one address per minute
AUTH_FAILURES = 6


class GrpcLimiter:
    def __init__(self, process: RatewatchProcess, grpc_port: int):
        self.process = process
        self.grpc_port = grpc_port


@pytest.fixture(scope="module")
def grpc_limiter(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GrpcLimiter]:
    """A `ratewatch serve --grpc-port` whose decisions go to its Redis stream (as under
    `ratewatch up`), under a key prefix of its own."""
    grpc_port = free_port()
    process = start_limiter(
        redis_server.url,
        tmp_path_factory.mktemp("grpc-limiter"),
        "--grpc-port",
        str(grpc_port),
        "--redis-events",
        "--key-prefix",
        PREFIX,
        env={"RATEWATCH_AUTH_FAILURE_LIMIT": f"{AUTH_FAILURES}/1m"},
    )
    yield GrpcLimiter(process, grpc_port)
    assert process.stop() == 0  # the gRPC server stops with the limiter, cleanly


@pytest.fixture
def key(redis_server: RedisServer, tenant: str) -> str:
    return create_key(redis_server.url, tenant, prefix=PREFIX)


@pytest.fixture
async def rls(grpc_limiter: GrpcLimiter) -> AsyncIterator[RateLimitServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_limiter.grpc_port}") as channel:
        yield RateLimitServiceStub(channel)


def descriptor(*entries: tuple[str, str], limit: int = 0, hits: int | None = None) -> Any:
    built = RateLimitDescriptor(
        entries=[RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if limit:
        built.limit.CopyFrom(
            RateLimitDescriptor.RateLimitOverride(
                requests_per_unit=limit, unit=RateLimitUnit.MINUTE
            )
        )
    if hits is not None:
        built.hits_addend.CopyFrom(UInt64Value(value=hits))
    return built


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


async def ask(
    rls: RateLimitServiceStub, api_key: str, *descriptors: Any, domain: str = "edge", hits: int = 0
) -> Any:
    request = RateLimitRequest(domain=domain, descriptors=list(descriptors), hits_addend=hits)
    return await rls.ShouldRateLimit(request, metadata=bearer(api_key), timeout=10)


async def tenant_events(redis: Redis, tenant: str, count: int) -> list[DecisionEvent]:
    """The decision events of ``tenant`` in the module limiter's stream, once there are
    ``count``."""
    found: list[DecisionEvent] = []

    async def enough() -> bool:
        entries = await redis.xrange(Keyspace(PREFIX).events)
        found[:] = [
            event
            for entry_id, fields in entries
            for event in decode_entry(entry_record(entry_id, fields))
            if event.tenant == tenant
        ]
        return len(found) >= count

    await eventually_awaited(enough, 10, f"{count} decision events of {tenant}", 0.05)
    return found


def headers(response: Any) -> dict[str, str]:
    return {header.key: header.value for header in response.response_headers_to_add}


async def test_calls_within_the_limit_are_ok_then_over_limit_with_the_reset_and_headers(
    rls: RateLimitServiceStub, key: str
) -> None:
    client = descriptor(("remote_address", "192.0.2.10"), ("path", "/api"), limit=3)
    answers = [await ask(rls, key, client) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER_LIMIT]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    first, denied = answers[0], answers[3]
    assert first.statuses[0].current_limit.requests_per_unit == 3
    assert first.statuses[0].current_limit.unit == MINUTE
    sent = headers(first)
    assert sent["ratelimit-policy"] == '"default";q=3;w=60'
    assert sent["ratelimit"].startswith('"default";r=2;t=')
    assert 1 <= int(sent["ratelimit"].rpartition("=")[2]) <= 60
    assert "retry-after" not in sent
    status = denied.statuses[0]
    assert status.code == OVER_LIMIT
    assert 0 < status.duration_until_reset.ToMilliseconds() <= 120_000
    denied_headers = headers(denied)
    assert denied_headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert denied_headers["ratelimit"].startswith('"default";r=0;t=')
    # a sliding window frees a slot at most two windows on
    assert 1 <= int(denied_headers["retry-after"]) <= 120


async def test_each_descriptor_has_its_status_and_the_denying_one_sets_the_headers(
    rls: RateLimitServiceStub, key: str
) -> None:
    unlimited = descriptor(("path", "/health"))
    strict = descriptor(("user", "u1"), limit=1)
    generous = descriptor(("path", "/api"), limit=100)
    await ask(rls, key, strict)
    response = await ask(rls, key, unlimited, strict, generous)
    assert response.overall_code == OVER_LIMIT
    assert [s.code for s in response.statuses] == [OK, OVER_LIMIT, OK]
    # a descriptor without a limit is answered OK with none, as Envoy's own service does
    assert not response.statuses[0].HasField("current_limit")
    assert response.statuses[2].limit_remaining == 99
    sent = headers(response)
    assert sent["ratelimit-policy"] == '"descriptor1";q=1;w=60, "descriptor2";q=100;w=60'
    assert sent["ratelimit"].startswith('"descriptor1";r=0;')
    assert "retry-after" in sent
    # only descriptors without a limit: OK, no headers, nothing decided
    free = await ask(rls, key, unlimited)
    assert free.overall_code == OK
    assert headers(free) == {}


async def test_hits_addend_is_the_cost_and_a_descriptors_own_overrides_the_requests(
    rls: RateLimitServiceStub, key: str
) -> None:
    response = await ask(rls, key, descriptor(("user", "bulk"), limit=10), hits=4)
    assert response.statuses[0].limit_remaining == 6
    response = await ask(rls, key, descriptor(("user", "bulk"), limit=10, hits=5), hits=4)
    assert response.statuses[0].limit_remaining == 1


async def test_domains_and_entries_are_separate_counters(
    rls: RateLimitServiceStub, key: str
) -> None:
    one = descriptor(("user", "u2"), limit=1)
    assert (await ask(rls, key, one, domain="edge")).overall_code == OK
    assert (await ask(rls, key, one, domain="internal")).overall_code == OK
    assert (await ask(rls, key, descriptor(("user", "u3"), limit=1))).overall_code == OK
    assert (await ask(rls, key, one, domain="edge")).overall_code == OVER_LIMIT


async def test_decisions_reach_the_stream_like_the_http_ones(
    rls: RateLimitServiceStub, key: str, tenant: str, redis: Redis
) -> None:
    client = descriptor(("remote_address", "::ffff:198.51.100.7"), ("path", "/pay"), limit=1)
    await ask(rls, key, client, descriptor(("path", "/free")))
    await ask(rls, key, client)
    found = await tenant_events(redis, tenant, 2)
    assert len(found) == 2  # the descriptor without a limit decided nothing
    first, second = found
    assert (first.key, first.limit, first.window, first.cost) == (
        "edge|remote_address=::ffff:198.51.100.7|path=/pay",
        1,
        60,
        1,
    )
    assert first.ip == "198.51.100.7"  # blocks by IP apply to it
    assert (first.allowed, second.allowed) == (True, False)
    assert (first.reason, second.reason) == ("ok", "limit")


def _without_unit() -> Any:
    override = RateLimitDescriptor.RateLimitOverride(requests_per_unit=5)
    entry = RateLimitDescriptor.Entry(key="a", value="b")
    return RateLimitRequest(
        domain="edge", descriptors=[RateLimitDescriptor(entries=[entry], limit=override)]
    )


# a malformed request -> what INVALID_ARGUMENT's details say of it
MALFORMED = {
    "no-descriptor": (lambda: RateLimitRequest(domain="edge"), "no descriptor"),
    "no-domain": (
        lambda: RateLimitRequest(domain="", descriptors=[descriptor(("a", "b"))]),
        "domain",
    ),
    "no-entry": (
        lambda: RateLimitRequest(domain="edge", descriptors=[RateLimitDescriptor()]),
        "descriptors[0] has no entry",
    ),
    "bad-address": (
        lambda: RateLimitRequest(
            domain="edge",
            descriptors=[descriptor(("a", "b")), descriptor(("remote_address", "nope"))],
        ),
        "descriptors[1].remote_address",
    ),
    "no-unit": (_without_unit, "no unit"),
    "long-key": (
        lambda: RateLimitRequest(
            domain="edge", descriptors=[descriptor(("a", "b" * 600), limit=1)]
        ),
        "at most 512",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_a_malformed_request_is_invalid_argument(
    rls: RateLimitServiceStub, key: str, case: str
) -> None:
    build, detail = MALFORMED[case]
    bad = build()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rls.ShouldRateLimit(bad, metadata=bearer(key), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (raised.value.details() or "")


@pytest.fixture
def signed_key(redis_server: RedisServer, tenant: str) -> str:
    return create_signed_key(redis_server.url, tenant, prefix=PREFIX)[0]


async def test_a_signed_key_is_refused_it_cannot_sign_a_call(
    rls: RateLimitServiceStub, signed_key: str
) -> None:
    signed = signed_key
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ask(rls, signed, descriptor(("a", "b"), limit=1))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_without_a_valid_key_unauthenticated_then_resource_exhausted(
    rls: RateLimitServiceStub, key: str
) -> None:
    """The only test of the module that fails authentication: the module's limiter allows
    ``AUTH_FAILURES`` a minute from 127.0.0.1, then answers RESOURCE_EXHAUSTED."""
    request = RateLimitRequest(domain="edge", descriptors=[descriptor(("a", "b"), limit=5)])
    codes = []
    for metadata in [(), (("authorization", "Bearer rwk_" + secrets.token_hex(16)),)] * 5:
        try:
            await rls.ShouldRateLimit(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            last = error
    assert codes[:AUTH_FAILURES] == [grpc.StatusCode.UNAUTHENTICATED] * AUTH_FAILURES
    assert set(codes[AUTH_FAILURES:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    retry_after = dict(last.trailing_metadata() or ())["retry-after"]
    assert 1 <= int(retry_after) <= 120  # a sliding minute frees a slot within two
    # the limit is on failures: a valid key from the same address is still served
    assert (await ask(rls, key, descriptor(("a", "b"), limit=5))).overall_code == OK


def test_a_limiter_without_the_grpc_port_never_loads_grpc(limiter: RatewatchProcess) -> None:
    assert limiter.process is not None
    maps = Path(f"/proc/{limiter.process.pid}/maps").read_text()
    assert "cygrpc" not in maps


# policies: a descriptor's entry `policy` names one of the tenant's


async def put_policy(redis: Redis, tenant: str, name: str, rule: dict[str, Any]) -> None:
    await PolicyStore(redis, Keyspace(PREFIX)).put_policy(tenant, name, parse_rule(rule))


async def test_a_policy_entry_names_the_policy_every_window_of_which_is_checked(
    rls: RateLimitServiceStub, key: str, tenant: str, redis: Redis
) -> None:
    await put_policy(
        redis,
        tenant,
        "free",
        {"limits": [{"limit": 2, "window": 60}, {"limit": 3, "window": 3600}]},
    )
    user = descriptor(("policy", "free"), ("user", "u1"))
    answers = [await ask(rls, key, user) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK, OK, OVER_LIMIT]
    first, denied = answers[0], answers[2]
    assert first.statuses[0].current_limit.name == "free"
    # the window that decided: the minute's (the fewest remaining, then the denial)
    assert (
        first.statuses[0].current_limit.requests_per_unit,
        first.statuses[0].limit_remaining,
    ) == (2, 1)
    assert denied.statuses[0].current_limit.unit == MINUTE
    sent = headers(denied)
    assert sent["ratelimit-policy"] == '"free-60";q=2;w=60, "free-3600";q=3;w=3600'
    assert sent["ratelimit"].startswith('"free-60";r=0;t=')
    assert "retry-after" in sent
    # the entry `policy` is not part of the key: the same user without it is another key
    other = descriptor(("policy", "free"), ("user", "u2"))
    assert (await ask(rls, key, other)).overall_code == OK


async def test_an_override_of_the_descriptors_key_applies(
    rls: RateLimitServiceStub, key: str, tenant: str, redis: Redis
) -> None:
    await put_policy(redis, tenant, "api", {"limits": [{"limit": 1, "window": 60}]})
    await PolicyStore(redis, Keyspace(PREFIX)).put_override(
        tenant,
        "api",
        "edge|account=enterprise-*",
        parse_rule({"limits": [{"limit": 5, "window": 60}]}),
    )
    big = await ask(rls, key, descriptor(("policy", "api"), ("account", "enterprise-7")))
    small = await ask(rls, key, descriptor(("policy", "api"), ("account", "free-7")))
    assert big.statuses[0].current_limit.requests_per_unit == 5
    assert small.statuses[0].current_limit.requests_per_unit == 1


async def test_a_shadow_policy_answers_ok_and_its_event_keeps_the_denial(
    rls: RateLimitServiceStub, key: str, tenant: str, redis: Redis
) -> None:
    await put_policy(
        redis, tenant, "trial", {"limits": [{"limit": 1, "window": 60}], "mode": "shadow"}
    )
    user = descriptor(("policy", "trial"), ("user", "u9"))
    assert [(await ask(rls, key, user)).overall_code for _ in range(2)] == [OK, OK]
    events = await tenant_events(redis, tenant, 2)
    assert [(e.allowed, e.reason, e.policy, e.shadow) for e in events] == [
        (True, "ok", "trial", True),
        (False, "limit", "trial", True),
    ]


async def test_an_unknown_policy_is_not_found(rls: RateLimitServiceStub, key: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ask(
            rls, key, descriptor(("a", "b"), limit=5), descriptor(("policy", "nope"), ("a", "b"))
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "descriptors[1]" in (raised.value.details() or "")


async def test_a_policy_alone_is_one_counter_of_the_domain(
    rls: RateLimitServiceStub, key: str, tenant: str, redis: Redis
) -> None:
    await put_policy(redis, tenant, "global", {"limits": [{"limit": 2, "window": 60}]})
    alone = descriptor(("policy", "global"))
    codes = [(await ask(rls, key, alone)).overall_code for _ in range(3)]
    assert codes == [OK, OK, OVER_LIMIT]
    events = await tenant_events(redis, tenant, 3)
    assert {event.key for event in events} == {"edge"}


async def test_calls_are_timed_in_the_limiters_metrics(
    rls: RateLimitServiceStub, key: str, grpc_limiter: GrpcLimiter
) -> None:
    await ask(rls, key, descriptor(("user", "timed"), limit=5))
    pattern = re.compile(r'^ratewatch_check_duration_seconds_count\{endpoint="rls"\} (\S+)$', re.M)

    async def timed() -> float:
        async with httpx.AsyncClient(base_url=grpc_limiter.process.base_url) as client:
            found = pattern.search((await client.get("/metrics", timeout=10)).text)
        return float(found.group(1)) if found else 0.0

    async def counted() -> bool:
        return await timed() >= 1

    # the metrics are flushed every second
    await eventually_awaited(counted, 10, "the call counted in the metrics", 0.1)


async def test_a_call_over_64_kib_is_refused_before_it_is_read(
    rls: RateLimitServiceStub, key: str
) -> None:
    huge = descriptor(("user", "x" * (65 * 1024)), limit=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ask(rls, key, huge)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_descriptor_naming_a_policy_ignores_its_own_limit(
    rls: RateLimitServiceStub, key: str, tenant: str, redis: Redis
) -> None:
    await put_policy(redis, tenant, "strict", {"limits": [{"limit": 1, "window": 60}]})
    both = descriptor(("policy", "strict"), ("user", "u5"), limit=100)
    answers = [await ask(rls, key, both) for _ in range(2)]
    assert [a.overall_code for a in answers] == [OK, OVER_LIMIT]
    assert answers[0].statuses[0].current_limit.requests_per_unit == 1
