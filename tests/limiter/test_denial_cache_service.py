"""The denial cache in a running limiter: answered like Redis's denials, counted in
/metrics, and every decision it answers reaches the decision stream exactly once (the
embedded Valkey stream and Kafka alike)."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from stream.events import DECISIONS_TOPIC, DecisionEvent, decode_entry
from stream.handlers import entry_record
from tests.support.credentials import create_key
from tests.support.kafka import KafkaBroker, read_topic
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

pytestmark = pytest.mark.timeout(90)

OVER = {"key": "user:1", "limit": 2, "window": 3600}  # the third check is over, for 30 min


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def check(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    response = client.post("/v1/check", json=body)
    assert response.status_code == 200, response.text
    return response


def client_of(process: RatewatchProcess, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=process.base_url, timeout=10, headers={"Authorization": f"Bearer {api_key}"}
    )


@pytest.fixture
def cached_limiter(redis_server: RedisServer, tmp_path: Path) -> Iterator[RatewatchProcess]:
    process = start_limiter(redis_server.url, tmp_path, "--denial-cache-entries", "100")
    yield process
    process.stop()


def test_a_key_over_its_limit_is_denied_from_the_cache_and_counted(
    redis_server: RedisServer, cached_limiter: RatewatchProcess, tenant: str
) -> None:
    with client_of(cached_limiter, create_key(redis_server.url, tenant)) as client:
        answers = [check(client, OVER) for _ in range(12)]
        assert [r.json()["allowed"] for r in answers] == [True, True] + [False] * 10
        by_redis, by_cache = answers[2], answers[3:]
        for response in by_cache:  # as Redis answers: a limit, a retry time, the headers
            body = response.json()
            assert (body["reason"], body["remaining"]) == ("limit", 0)
            assert 0 < body["retry_after"] <= by_redis.json()["retry_after"]
            assert body["reset_in"] <= by_redis.json()["reset_in"]
            assert response.headers["retry-after"] == str(body["retry_after"])
        # a smaller cost than the cached denial's asks Redis: a read is answered, allowed
        read = check(client, {**OVER, "cost": 0}).json()
        assert read["allowed"]
        batch = client.post("/v1/batch", json={"checks": [OVER, {**OVER, "key": "user:2"}]})
        assert [r["allowed"] for r in batch.json()["results"]] == [False, True]
        text = client.get("/metrics").text
    assert metric(text, "ratewatch_denial_cache_hits_total") == 9 + 1
    assert metric(text, "ratewatch_denial_cache_stores_total") == 1
    assert metric(text, "ratewatch_denial_cache_misses_total") == 3 + 1 + 1
    assert metric(text, "ratewatch_denial_cache_evictions_total") == 0
    assert metric(text, "ratewatch_denial_cache_entries") == 1
    # a decision answered is a decision counted, wherever it was answered
    assert metric(text, 'ratewatch_decisions_total{reason="limit",result="denied"}') == 1 + 10
    assert metric(text, 'ratewatch_decisions_total{reason="ok",result="allowed"}') == 4


def test_the_cache_is_off_unless_sized_and_its_size_is_checked(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratewatch", "serve", "--redis-url", redis_server.url,
         "--denial-cache-entries", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--denial-cache-entries" in result.stderr
    assert "Traceback" not in result.stderr
    plain = start_limiter(redis_server.url, tmp_path)
    try:
        tenant = "t" + secrets.token_hex(6)
        with client_of(plain, create_key(redis_server.url, tenant)) as client:
            for _ in range(4):
                check(client, OVER)
            assert metric(client.get("/metrics").text, "ratewatch_denial_cache_hits_total") == 0
    finally:
        plain.stop()


async def stream_events(url: str, stream: str) -> list[DecisionEvent]:
    redis = Redis.from_url(url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    finally:
        await redis.aclose()
    return [e for entry_id, fields in entries for e in decode_entry(entry_record(entry_id, fields))]


def test_cached_decisions_reach_the_embedded_stream_exactly_once(
    redis_server: RedisServer, tmp_path: Path, tenant: str
) -> None:
    prefix = "dc" + secrets.token_hex(4)
    stream = Keyspace(prefix).events
    process = start_limiter(
        redis_server.url, tmp_path, "--redis-events", "--key-prefix", prefix,
        "--denial-cache-entries", "100",
    )  # fmt: skip
    try:
        with client_of(process, create_key(redis_server.url, tenant, prefix=prefix)) as client:
            for _ in range(30):
                check(client, OVER)
            client.post("/v1/batch", json={"checks": [OVER, OVER, {**OVER, "key": "b"}]})
            hits = metric(client.get("/metrics").text, "ratewatch_denial_cache_hits_total")
            assert hits == 27 + 2

            def counted() -> bool:
                return len(asyncio.run(stream_events(redis_server.url, stream))) >= 33

            wait_until(counted, 30, "33 decisions in the stream")
            for _ in range(5):  # answered just before the shutdown: appended on the way out
                check(client, OVER)
    finally:
        assert process.stop() == 0
    events = asyncio.run(stream_events(redis_server.url, stream))
    assert len(events) == 38
    assert len({e.event_id for e in events}) == 38
    assert [e.allowed for e in events].count(True) == 3
    assert {(e.tenant, e.reason) for e in events if not e.allowed} == {(tenant, "limit")}


@pytest.mark.timeout(180)
def test_cached_decisions_reach_the_kafka_topic(
    redis_server: RedisServer, kafka_broker: KafkaBroker, tmp_path: Path, tenant: str
) -> None:
    process = start_limiter(
        redis_server.url, tmp_path, "--kafka", kafka_broker.bootstrap,
        "--denial-cache-entries", "100",
    )  # fmt: skip
    try:
        with client_of(process, create_key(redis_server.url, tenant)) as client:
            for _ in range(20):
                check(client, OVER)
            assert metric(client.get("/metrics").text, "ratewatch_denial_cache_hits_total") == 17
            received = asyncio.run(
                read_topic(
                    kafka_broker.bootstrap,
                    DECISIONS_TOPIC,
                    20,
                    within=60,
                    where=lambda event: event.tenant == tenant,
                )
            )
    finally:
        process.stop()
    assert len(received) == 20
    assert [r.event.allowed for r in received].count(False) == 18
