"""Creating the Redis client from a URL, with the limiter's short timeouts and no retries
(a failed call goes to the failure policy at once instead of retrying on the hot path)."""

from __future__ import annotations

from urllib.parse import urlparse

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from limiter.errors import ConfigError

REDIS_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys")


def check_redis_url(url: str) -> str:
    """``url`` if it is a Redis URL this client can use; a ConfigError naming it otherwise."""
    scheme = urlparse(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"redis url {url!r} is not valid: its scheme must be one of "
            f"{', '.join(s + '://' for s in REDIS_SCHEMES)}"
        )
    return url


def redis_from_url(url: str, timeout: float, max_connections: int = 64) -> Redis:
    check_redis_url(url)
    if url.startswith(("valkey://", "valkeys://")):
        url = "redis" + url[len("valkey") :]
    try:
        return _connect(url, timeout, max_connections)
    except ValueError as exc:
        raise ConfigError(f"redis url {url!r} is not valid: {exc}") from None


def _connect(url: str, timeout: float, max_connections: int) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        health_check_interval=0,
    )
