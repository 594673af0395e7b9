"""``ratewatch detect`` in the distributed deployment: a real `ratewatch serve --kafka`
streams decisions to the tansu broker, `ratewatch detect` reads them as a consumer group
and blocks a burst in the limiter's Redis, which the limiter then enforces; `ratewatch
stream --redis-url` publishes the detector's alert on ``ratewatch.alerts.v1``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stream.alerts import ALERTS_TOPIC
from stream.alerts import decode as decode_alert
from stream.events import DECISIONS_TOPIC
from tests.support.credentials import KEY_SECRET, create_key
from tests.support.kafka import KafkaBroker, ensure_topic, read_messages
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter
from tests.support.traffic import Traffic, background_users, burst_checks, check_from

pytestmark = pytest.mark.timeout(240)

PREFIX = "rwdetect"


@pytest.fixture
def distributed(
    kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path
) -> Iterator[RatewatchProcess]:
    for topic in (DECISIONS_TOPIC, ALERTS_TOPIC):
        asyncio.run(ensure_topic(kafka_broker.bootstrap, topic))
    common = ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--kafka"]
    env = {"RATEWATCH_KEY_SECRET": KEY_SECRET.hex()}
    limiter = start_limiter(
        redis_server.url, tmp_path, "--key-prefix", PREFIX, "--kafka", kafka_broker.bootstrap
    )
    log = tmp_path / "detect.log"
    detector = RatewatchProcess(
        ["detect", "--data-dir", str(tmp_path / "detect"), "--interval", "1", *common,
         kafka_broker.bootstrap],
        limiter.port,  # serves no HTTP: ready when it says it consumes
        env=env,
        log_path=log,
    )  # fmt: skip
    detector.launch()
    wait_until(
        lambda: "detecting abuse in" in log.read_text(errors="replace"),
        60,
        "ratewatch detect to join its group",
        0.2,
    )
    # the analytics consumer, with the limiter's Redis: it drains the alert outbox
    stream_log = tmp_path / "stream.log"
    analytics = RatewatchProcess(
        ["stream", "--data-dir", str(tmp_path / "stream"), "--group", f"{PREFIX}-analytics",
         *common, kafka_broker.bootstrap],
        limiter.port,
        env=env,
        log_path=stream_log,
    )  # fmt: skip
    analytics.launch()
    wait_until(
        lambda: "draining alert outbox" in stream_log.read_text(errors="replace"),
        60,
        "ratewatch stream to drain the alert outbox",
        0.2,
    )
    yield limiter
    analytics.stop()
    detector.stop()
    limiter.stop()


def test_detect_blocks_a_burst_read_from_kafka_and_the_alert_is_published(
    distributed: RatewatchProcess, redis_server: RedisServer, kafka_broker: KafkaBroker, tenant: str
) -> None:
    key = create_key(redis_server.url, tenant, admin=True, prefix=PREFIX)
    attacker = "203.0.113.99"
    with httpx.Client(
        base_url=distributed.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        def blocked() -> bool:
            blocks = client.get("/v1/blocks").json()["blocks"]
            return any(b["value"] == attacker and b["source"] == "detector" for b in blocks)

        with Traffic(client, background_users(20) + burst_checks(attacker, 200)):
            wait_until(blocked, 90, f"a detector block of {attacker}", 0.5)
        assert check_from(client, attacker)["reason"] == "blocked"
        block = next(b for b in client.get("/v1/blocks").json()["blocks"] if b["value"] == attacker)

    # announced on the alert topic, keyed by tenant, with the block's explanation
    messages = asyncio.run(
        read_messages(kafka_broker.bootstrap, ALERTS_TOPIC, 1, tenant.encode(), within=60)
    )
    alerts = [decode_alert(value) for _, value in messages]
    assert [(a.kind, a.scope, a.subject, a.block_id) for a in alerts] == [
        ("block.created", "ip", attacker, block["id"])
    ]
    assert alerts[0].explanation["reasons"] == block["explanation"]["reasons"]
