"""What the rate limit service answers for outcomes the server rarely produces on demand,
and how it reads a call's key and peer: the pure functions of ``limiter/grpc/``."""

from __future__ import annotations

import pytest
from envoy.service.ratelimit.v3.rls_pb2 import RateLimitResponse

from limiter.algorithms import NO_RETRY, Outcome, Reason
from limiter.grpc.answers import Verdict, respond
from limiter.grpc.service import bearer, peer_address

pytestmark = pytest.mark.timeout(10)


def headers(response: RateLimitResponse) -> dict[str, str]:
    return {header.key: header.value for header in response.response_headers_to_add}


def test_a_window_that_is_no_whole_unit_is_spelled_in_the_limits_name() -> None:
    response = respond([Verdict(10, 5, Outcome(True, 9, 5000, NO_RETRY, Reason.OK))])
    current = response.statuses[0].current_limit
    assert current.unit == RateLimitResponse.RateLimit.UNKNOWN
    assert (current.requests_per_unit, current.name) == (10, "10 per 5s")
    assert response.statuses[0].duration_until_reset.ToMilliseconds() == 5000


def test_a_cost_above_the_limit_is_over_limit_without_retry_after() -> None:
    denied = Outcome(False, 3, 1500, NO_RETRY, Reason.COST_EXCEEDS_LIMIT)
    response = respond([Verdict(3, 60, denied)])
    assert response.overall_code == RateLimitResponse.OVER_LIMIT
    assert headers(response) == {
        "ratelimit-policy": '"default";q=3;w=60',
        "ratelimit": '"default";r=3;t=2',
    }


def test_the_longest_wait_of_the_denied_descriptors_sets_the_headers() -> None:
    response = respond(
        [
            Verdict(5, 60, Outcome(False, 0, 30_000, 2_000, Reason.LIMIT)),
            None,
            Verdict(100, 3600, Outcome(False, 0, 900_000, 40_000, Reason.LIMIT), "hourly"),
        ]
    )
    assert [s.code for s in response.statuses] == [
        RateLimitResponse.OVER_LIMIT,
        RateLimitResponse.OK,
        RateLimitResponse.OVER_LIMIT,
    ]
    sent = headers(response)
    assert sent["ratelimit-policy"] == '"descriptor0";q=5;w=60, "hourly";q=100;w=3600'
    assert sent["ratelimit"] == '"hourly";r=0;t=900'
    assert sent["retry-after"] == "40"


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ((("authorization", "Bearer rwk_a"),), "rwk_a"),
        ((("authorization", "bearer  rwk_b "),), "rwk_b"),
        ((("authorization", "rwk_c"),), "rwk_c"),
        ((("x-other", "1"), ("authorization", b"Bearer rwk_d")), "rwk_d"),
        ((("authorization", "Bearer "),), None),
        ((), None),
    ],
)
def test_the_key_comes_from_the_authorization_metadata(
    metadata: tuple[tuple[str, str | bytes], ...], key: str | None
) -> None:
    assert bearer(metadata) == key


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:203.0.113.7:51234", "203.0.113.7"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("unix:/run/envoy.sock", "unix:/run/envoy.sock"),
    ],
)
def test_the_peer_address_is_the_failed_authentications_subject(peer: str, address: str) -> None:
    assert peer_address(peer) == address
