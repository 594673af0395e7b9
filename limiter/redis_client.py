"""Creating the Redis client from a URL, with the limiter's short timeouts and no retries
(a failed call goes to the failure policy at once instead of retrying on the hot path)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_from_url(url: str, timeout: float, max_connections: int = 64) -> Redis:
    if url.startswith(("valkey://", "valkeys://")):
        url = "redis" + url[len("valkey"):]
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        health_check_interval=0,
    )
