"""Session-wide real servers, and per-test isolation by tenant."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from analytics.query_client import answers
from limiter.keyspace import Keyspace
from limiter.state.apikeys import KeyHasher, KeyStore
from tests.kafka import kafka_broker  # noqa: F401
from tests.servers import RatewatchProcess, RedisServer, free_port, wait_until
from tests.webhook_harness import Receiver

KEY_SECRET = bytes(range(32))
BOOTSTRAP_KEY = "rwk_test-bootstrap-" + secrets.token_urlsafe(24)


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
    workdir = tmp_path_factory.mktemp("limiter")
    port = free_port()
    process = RatewatchProcess(
        [
            "serve",
            "--port",
            str(port),
            "--redis-url",
            redis_server.url,
            "--data-dir",
            str(workdir / "data"),
        ],
        port,
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex(), "RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
        log_path=workdir / "serve.log",
    ).start()
    yield process
    process.stop()


STACK_PREFIX = "rwstack"


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
    workdir = tmp_path_factory.mktemp("stack")
    port = free_port()
    process = RatewatchProcess(
        [
            "up",
            "--port",
            str(port),
            "--redis-url",
            redis_server.url,
            "--key-prefix",
            STACK_PREFIX,
            "--data-dir",
            str(workdir / "data"),
            "--metrics-port",
            str(stack_metrics_port),
        ],
        port,
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex(), "RATEWATCH_WEBHOOKS_ALLOW_PRIVATE": "1"},
        log_path=workdir / "up.log",
        data_dir=workdir / "data",
    ).start(timeout=90)
    # ready for analytics once the pipeline worker, which owns chDB, answers queries
    socket = workdir / "data" / "clickhouse" / "query.sock"
    wait_until(lambda: answers(socket), 90, f"the pipeline's query socket {socket}", 0.2)
    yield process
    process.stop(timeout=60)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests are isolated by tenant namespace, not by restarts."""
    return "t" + secrets.token_hex(6)


def create_key(
    redis_url: str, tenant: str, *, admin: bool = False, prefix: str = "rw", segment: str = ""
) -> str:
    """A new API key of ``tenant``, written straight to the store as the CLI does."""

    async def go() -> str:
        client = Redis.from_url(redis_url)
        try:
            store = KeyStore(client, Keyspace(prefix), KeyHasher(KEY_SECRET))
            api_key, _ = await store.create(tenant, admin=admin, name="test", segment=segment)
            return api_key
        finally:
            await client.aclose()

    return asyncio.run(go())


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
def anon(limiter: RatewatchProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limiter.base_url, timeout=10) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # async tests run on anyio's asyncio backend
    for item in items:
        if item.get_closest_marker("anyio") is None and _is_async(item):
            item.add_marker(pytest.mark.anyio)


def _is_async(item: pytest.Item) -> bool:
    import inspect

    return isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver: a real HTTP server that answers 200 unless told otherwise."""
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
async def worker_redis(redis: Redis, keyspace: Keyspace) -> AsyncIterator[Redis]:
    """The session's Redis, with the test's ``keyspace`` emptied afterwards (each module
    that uses it names its own ``keyspace`` fixture)."""
    yield redis
    keys = [key async for key in redis.scan_iter(match=f"{keyspace.prefix}:*")]
    if keys:
        await redis.delete(*keys)
