"""The limiter's settings refuse what it cannot run with, naming the bad value."""

from __future__ import annotations

from typing import Any

import pytest

from limiter.errors import ConfigError
from limiter.settings import LimiterSettings

pytestmark = pytest.mark.timeout(10)

REDIS = "redis://127.0.0.1:6390"


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("header_timeout", 0.0, "header timeout 0.0s"),
        ("body_timeout", float("nan"), "body timeout nan"),
        ("keep_alive_timeout", 7200.0, "keep-alive timeout 7200.0s"),
        ("max_connections", 0, "max connections 0"),
        ("max_header_bytes", 100, "max header bytes 100"),
        ("auth_unknown_entries", -1, "auth unknown entries -1"),
        ("metrics_token", "short", "5 characters"),
        ("metrics_token", "with a space in it, long enough", "printable ASCII"),
        ("trusted_proxies", "10.0.0.5, proxy.local", "trusted proxy 'proxy.local'"),
        ("denial_cache_entries", -1, "denial cache entries -1"),
        ("denial_cache_entries", 10**8, "denial cache entries 100000000"),
    ],
)
def test_bad_bounds_are_refused_naming_the_value(field: str, value: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        LimiterSettings(redis_url=REDIS, **{field: value})


def test_the_defaults_bound_every_client() -> None:
    settings = LimiterSettings(redis_url=REDIS)
    assert settings.header_timeout == 10.0
    assert settings.body_timeout == 30.0
    assert settings.keep_alive_timeout == 5.0
    assert settings.max_connections == 1000
    assert settings.max_header_bytes == 64 * 1024
    assert settings.auth_unknown_entries == 1024
    assert settings.metrics_token is None
