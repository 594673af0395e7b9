"""Session-wide real servers, and per-test isolation by tenant.

The servers start once per session (Redis, a `ratewatch serve`, a `ratewatch up`, the Kafka
broker) and every test shares them under a tenant of its own; what the fixtures are built
from is in ``tests/support/``."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.credentials import BOOTSTRAP_KEY, STACK_PREFIX, create_key
from tests.support.kafka import KafkaBroker
from tests.support.servers import (
    NO_AUTH_FAILURE_LIMIT,
    RatewatchProcess,
    RedisServer,
    free_port,
    start_limiter,
    start_stack,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def limiter(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RatewatchProcess]:
    """One `ratewatch serve` for the session, on the session's Redis."""
    process = start_limiter(
        redis_server.url,
        tmp_path_factory.mktemp("limiter"),
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def stack_metrics_port() -> int:
    """Where the session's `ratewatch up` serves its pipeline worker's metrics."""
    return free_port()


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, stack_metrics_port: int
) -> Iterator[RatewatchProcess]:
    """One `ratewatch up` for the session (limiter, pipeline, chDB) on the session's Redis,
    under its own key prefix; tests isolate by tenant.  Its chDB answers on
    ``<data dir>/clickhouse/query.sock``."""
    process = start_stack(
        tmp_path_factory.mktemp("stack"),
        "--redis-url",
        redis_server.url,
        "--key-prefix",
        STACK_PREFIX,
        "--metrics-port",
        str(stack_metrics_port),
        # tests wait for their decisions' rows: a short age bound keeps them quick
        "--batch-max-age",
        "0.2",
        env={"RATEWATCH_WEBHOOKS_ALLOW_PRIVATE": "1", **NO_AUTH_FAILURE_LIMIT},
    )
    yield process
    process.stop(timeout=60)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One tansu broker for the session; tests isolate themselves by topic."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests are isolated by tenant namespace, not by restarts."""
    return "t" + secrets.token_hex(6)


@pytest.fixture
def admin_key(redis_server: RedisServer, tenant: str) -> str:
    return create_key(redis_server.url, tenant, admin=True)


@pytest.fixture
def standard_key(redis_server: RedisServer, tenant: str) -> str:
    return create_key(redis_server.url, tenant)


@pytest.fixture
def api(limiter: RatewatchProcess, admin_key: str) -> Iterator[httpx.Client]:
    """An HTTP client of the session's limiter, authenticated as the test tenant's admin."""
    with httpx.Client(
        base_url=limiter.base_url, timeout=10, headers={"Authorization": f"Bearer {admin_key}"}
    ) as client:
        yield client


@pytest.fixture
def admin(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str
) -> Iterator[httpx.Client]:
    """An HTTP client of the session's ``ratewatch up`` stack, authenticated as the test
    tenant's admin (a module may define an ``admin`` of its own)."""
    with stack.client(create_key(redis_server.url, tenant, admin=True, prefix=STACK_PREFIX)) as c:
        yield c


@pytest.fixture
def anon(limiter: RatewatchProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limiter.base_url, timeout=10) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # async tests run on anyio's asyncio backend
    for item in items:
        if item.get_closest_marker("anyio") is None and _is_async(item):
            item.add_marker(pytest.mark.anyio)


def _is_async(item: pytest.Item) -> bool:
    return isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
