"""``--metrics-port`` of the processes without an HTTP API: ``ratewatch stream`` (the Kafka
consumer and its outbox drains), ``ratewatch detect`` and ``ratewatch pipeline``, each run as
a real process on the session's broker and Redis, scraped over HTTP, and the counters
compared with what was sent to them."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio import Redis

from detectors.metrics import DetectionMetrics
from limiter.algorithms import Algorithm
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream.alerts import ALERTS_TOPIC
from stream.audit import AUDIT_TOPIC
from stream.consumer_metrics import ConsumerMetrics
from stream.events import DECISIONS_TOPIC, OUTBOX_FIELD, encode
from tests.support.credentials import KEY_SECRET, STACK_PREFIX, create_key
from tests.support.events import audit_events, numbered_decision
from tests.support.kafka import KafkaBroker, create_topic, ensure_topic, produce, unique_topic
from tests.support.outboxes import fill_outboxes
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter
from tests.support.traffic import Traffic, background_users, burst_checks

pytestmark = pytest.mark.timeout(120)


class Scrape:
    """One scrape of ``/metrics``, parsed as Prometheus parses it."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list[Sample]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample ``name`` with exactly ``labels``; None if it is not exposed."""
        found = [s.value for s in self.samples(name) if s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None


def scrape(port: int) -> Scrape | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def scrape_until(
    process: RatewatchProcess,
    port: int,
    condition: Callable[[Scrape], bool],
    within: float,
    what: str,
) -> Scrape:
    """Scrape until ``condition(scrape)`` holds (the process must keep running)."""
    latest: list[Scrape] = []

    def holds() -> bool:
        assert process.process is not None
        assert process.process.poll() is None, process.log()
        current = scrape(port)
        if current is None:
            return False
        latest[:] = [current]
        return condition(current)

    try:
        wait_until(holds, within, what, 0.2)
    except TimeoutError:
        pytest.fail(f"{what}; last scrape: {latest[0].families if latest else None}")
    return latest[0]


def assert_described(scrape: Scrape, names: list[str]) -> None:
    """Each family is exposed with HELP text, counters with their ``_total`` sample."""
    for name in names:
        family = scrape.families.get(name)
        assert family is not None, name
        assert family.documentation, name
        if family.type == "counter":
            assert scrape.samples(name + "_total"), name


@pytest.fixture
def processes() -> Iterator[list[RatewatchProcess]]:
    started: list[RatewatchProcess] = []
    yield started
    for process in reversed(started):
        process.stop(timeout=60)


def launch(
    processes: list[RatewatchProcess], args: list[str], tmp_path: Path, name: str, port: int = 0
) -> RatewatchProcess:
    process = RatewatchProcess(
        args,
        port or free_port(),  # the API port; these processes serve only their metrics
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
        log_path=tmp_path / f"{name}.log",
    )
    processes.append(process.launch())
    return process


# -- ratewatch stream --------------------------------------------------------------------------


def test_stream_counts_what_it_stored_dead_lettered_committed_and_drained(
    kafka_broker: KafkaBroker,
    redis_server: RedisServer,
    processes: list[RatewatchProcess],
    tmp_path: Path,
) -> None:
    topic = unique_topic()
    asyncio.run(create_topic(kafka_broker.bootstrap, topic, partitions=3))
    for outbox_topic in (AUDIT_TOPIC, ALERTS_TOPIC):
        asyncio.run(ensure_topic(kafka_broker.bootstrap, outbox_topic))
    events = [numbered_decision(i, tenant="metrics") for i in range(7)]
    messages = [encode(e) for e in events[:4]] + [b"{not json"] + [encode(e) for e in events[4:]]
    sent = asyncio.run(produce(kafka_broker.bootstrap, topic, messages))
    keyspace = Keyspace("rwm" + secrets.token_hex(4))
    audit = audit_events("metrics" + secrets.token_hex(3), 3)
    fill_outboxes(redis_server.url, keyspace, audit)
    asyncio.run(_add_entry(redis_server.url, keyspace.audit, {OUTBOX_FIELD: b"not an event"}))

    port = free_port()
    args = ["stream", "--kafka", kafka_broker.bootstrap, "--topic", topic]
    args += ["--group", "rw-metrics-" + uuid.uuid4().hex[:8], "--session-timeout", "6"]
    args += ["--data-dir", str(tmp_path / "d"), "--redis-url", redis_server.url]
    args += ["--key-prefix", keyspace.prefix, "--metrics-port", str(port)]
    process = launch(processes, args, tmp_path, "stream")

    def done(s: Scrape) -> bool:
        return (
            s.value("ratewatch_stream_events_stored_total") == len(events)
            and s.value("ratewatch_stream_dead_letters_total") == 1
            and s.value("ratewatch_outbox_entries_published_total", outbox="audit") == len(audit)
            and s.value("ratewatch_outbox_dead_letters_total", outbox="audit") == 1
        )

    result = scrape_until(process, port, done, 60, "the stream's counts")
    assert result.value("ratewatch_stream_events_skipped_total") == 0
    assert result.value("ratewatch_stream_dead_letters_failed_total") == 0
    assert result.value("ratewatch_stream_write_failures_total") == 0
    batches = result.value("ratewatch_stream_batches_total")
    assert batches is not None
    assert batches >= 1
    assert result.value("ratewatch_stream_write_duration_seconds_count") == batches
    newest = max(e.ts for e in events) / 1000
    assert result.value("ratewatch_stream_last_event_timestamp_seconds") == newest
    age = result.value("ratewatch_stream_last_event_age_seconds")
    assert age is not None
    assert age >= 0

    # every partition that received a message: committed up to its end, nothing left
    ends: dict[str, int] = {}
    for where in sent:
        ends[str(where.partition)] = max(ends.get(str(where.partition), 0), where.offset + 1)

    def committed(s: Scrape) -> bool:
        return all(
            s.value("ratewatch_stream_committed_offset", partition=p) == end
            for p, end in ends.items()
        )

    result = scrape_until(process, port, committed, 30, "the committed offsets")
    for partition in ends:
        assert result.value("ratewatch_stream_lag_records", partition=partition) == 0

    assert result.value("ratewatch_outbox_entries_stored_total", outbox="audit") == len(audit)
    assert result.value("ratewatch_outbox_entries_stored_total", outbox="alert") == 0
    assert result.value("ratewatch_outbox_failures_total", outbox="audit") == 0
    assert_described(
        result,
        [
            "ratewatch_stream_events_stored",
            "ratewatch_stream_events_skipped",
            "ratewatch_stream_batches",
            "ratewatch_stream_write_failures",
            "ratewatch_stream_write_duration_seconds",
            "ratewatch_stream_last_event_timestamp_seconds",
            "ratewatch_stream_last_event_age_seconds",
            "ratewatch_stream_committed_offset",
            "ratewatch_stream_lag_records",
            "ratewatch_stream_commit_failures",
            "ratewatch_stream_held_seconds",
            "ratewatch_stream_dead_letters",
            "ratewatch_outbox_entries_stored",
            "ratewatch_outbox_entries_published",
            "ratewatch_outbox_dead_letters",
            "ratewatch_outbox_failures",
        ],
    )
    assert process.stop(timeout=60) == 0


async def _add_entry(redis_url: str, stream: str, fields: dict[bytes, bytes]) -> None:
    client = Redis.from_url(redis_url)
    try:
        await client.xadd(stream, fields)  # type: ignore[arg-type]
    finally:
        await client.aclose()


# -- ratewatch detect --------------------------------------------------------------------------


async def detector_blocks_of_every_tenant(redis_url: str, prefix: str) -> int:
    """The block records the detectors wrote under ``prefix``, whatever the tenant."""
    redis = Redis.from_url(redis_url)
    try:
        found = 0
        async for name in redis.scan_iter(match=f"{prefix}:{{{prefix}:*}}:blocks"):
            records = await redis.hvals(name)
            found += sum(json.loads(record)["source"] == "detector" for record in records)
        return found
    finally:
        await redis.aclose()


@pytest.mark.timeout(240)
def test_detect_counts_its_decisions_evaluations_and_the_block_it_made(
    kafka_broker: KafkaBroker,
    redis_server: RedisServer,
    processes: list[RatewatchProcess],
    tenant: str,
    tmp_path: Path,
) -> None:
    asyncio.run(ensure_topic(kafka_broker.bootstrap, DECISIONS_TOPIC))
    prefix = "rwdm" + secrets.token_hex(4)
    common = ["--redis-url", redis_server.url, "--key-prefix", prefix]
    common += ["--kafka", kafka_broker.bootstrap]
    limiter = start_limiter(
        redis_server.url, tmp_path, "--key-prefix", prefix, "--kafka", kafka_broker.bootstrap
    )
    processes.append(limiter)
    port = free_port()
    detector = launch(
        processes,
        ["detect", "--data-dir", str(tmp_path / "detect"), "--interval", "1",
         "--group", f"{prefix}-detect", "--metrics-port", str(port), *common],
        tmp_path,
        "detect",
    )  # fmt: skip
    wait_until(lambda: "detecting abuse in" in detector.log(), 60, "ratewatch detect to join", 0.2)

    key = create_key(redis_server.url, tenant, admin=True, prefix=prefix)
    attacker = "203.0.113.77"
    with httpx.Client(
        base_url=limiter.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        def detector_blocks() -> list[dict[str, object]]:
            blocks = client.get("/v1/blocks").json()["blocks"]
            return [b for b in blocks if b["source"] == "detector"]

        with Traffic(client, background_users(20) + burst_checks(attacker, 200)):
            wait_until(
                lambda: any(b["value"] == attacker for b in detector_blocks()),
                90,
                f"a detector block of {attacker}",
                0.5,
            )

        def counted(s: Scrape) -> bool:
            # a block is made before it is counted, and the window may still make more:
            # polled until the two agree.  Every tenant's: the session topic also carries
            # other tests' decisions, which this detector judges too (under its prefix)
            total = sum(
                s.value("ratewatch_detect_verdicts_total", scope=scope, action=action) or 0
                for scope in ("ip", "key", "user_id")
                for action in ("created", "escalated", "shadowed")
            )
            return total == asyncio.run(detector_blocks_of_every_tenant(redis_server.url, prefix))

        result = scrape_until(detector, port, counted, 30, "the blocks to be counted")

    ip_blocks = result.value("ratewatch_detect_verdicts_total", scope="ip", action="created")
    assert ip_blocks is not None
    assert ip_blocks >= 1
    decisions = result.value("ratewatch_detect_decisions_total")
    assert decisions is not None
    assert decisions >= 200
    evaluations = result.value("ratewatch_detect_evaluations_total")
    assert evaluations is not None
    assert evaluations >= 1
    # the round being timed may not be counted yet
    timed = result.value("ratewatch_detect_evaluation_duration_seconds_count")
    assert timed is not None
    assert evaluations <= timed <= evaluations + 1
    assert result.value("ratewatch_detect_evaluation_failures_total") == 0
    for scope in ("ip", "key", "user_id"):
        assert result.value("ratewatch_detect_model_retrains_total", scope=scope) is not None
    assert_detection_cost(result)
    assert (result.value("ratewatch_detect_subjects_tracked", scope="ip") or 0) >= 1
    assert_described(result, DETECTION_FAMILIES)


DETECTION_FAMILIES = [
    "ratewatch_detect_decisions",
    "ratewatch_detect_evaluations",
    "ratewatch_detect_evaluation_failures",
    "ratewatch_detect_evaluation_duration_seconds",
    "ratewatch_detect_evaluation_decisions",
    "ratewatch_detect_subjects_tracked",
    "ratewatch_detect_verdicts",
    "ratewatch_detect_model_retrains",
    "ratewatch_detect_model_fit_duration_seconds",
    "ratewatch_detect_model_fit_failures",
    "ratewatch_detect_model_save_failures",
    "ratewatch_detect_model_fits_in_flight",
    "ratewatch_detect_model_fits_queued",
]


def assert_detection_cost(result: Scrape) -> None:
    """What detection cost, as exposed: consistent with the rounds and fits counted."""
    rounds = result.value("ratewatch_detect_evaluation_decisions_count")
    timed = result.value("ratewatch_detect_evaluation_duration_seconds_count")
    assert rounds is not None
    assert timed is not None
    assert rounds >= 1
    assert timed - 1 <= rounds <= timed  # the round being timed is counted after it
    handed = result.value("ratewatch_detect_evaluation_decisions_sum")
    decisions = result.value("ratewatch_detect_decisions_total")
    assert handed is not None
    assert decisions is not None
    assert handed <= decisions  # the ones queued since the last round are not handed yet
    for scope in ("ip", "key", "user_id"):
        fits = result.value("ratewatch_detect_model_fit_duration_seconds_count", scope=scope)
        spent = result.value("ratewatch_detect_model_fit_duration_seconds_sum", scope=scope)
        assert fits == result.value("ratewatch_detect_model_retrains_total", scope=scope)
        assert spent is not None
        assert spent >= 0
        assert (spent > 0) == bool(fits)
        assert result.value("ratewatch_detect_model_fit_failures_total", scope=scope) == 0
        assert result.value("ratewatch_detect_model_save_failures_total", scope=scope) == 0
    assert result.value("ratewatch_detect_model_fits_in_flight") in (0, 1)
    queued = result.value("ratewatch_detect_model_fits_queued")
    assert queued is not None
    assert 0 <= queued <= 12


# -- ratewatch pipeline ------------------------------------------------------------------------


def test_the_pipeline_worker_counts_the_valkey_stream_and_its_detection(
    redis_server: RedisServer, processes: list[RatewatchProcess], tenant: str, tmp_path: Path
) -> None:
    keyspace = Keyspace("rwpm" + secrets.token_hex(4))
    port = free_port()
    worker = launch(
        processes,
        ["pipeline", "--data-dir", str(tmp_path / "d"), "--redis-url", redis_server.url,
         "--key-prefix", keyspace.prefix, "--metrics-port", str(port)],
        tmp_path,
        "pipeline",
    )  # fmt: skip
    # detection reads from the stream's end on: decisions go in once it reads
    wait_until(lambda: "detecting abuse in" in worker.log(), 60, "the pipeline's detection", 0.2)
    checks = [Check(tenant, f"user:{i}", Algorithm.FIXED_WINDOW, 10, 60_000, 1) for i in range(5)]
    asyncio.run(_decide(redis_server.url, keyspace, checks))
    asyncio.run(_add_entry(redis_server.url, keyspace.events, {b"ts": b"x", b"d": b"[[no"}))

    def done(s: Scrape) -> bool:
        return (
            s.value("ratewatch_stream_events_stored_total") == len(checks)
            and s.value("ratewatch_stream_dead_letters_total") == 1
            and s.value("ratewatch_detect_decisions_total") == len(checks)
        )

    result = scrape_until(worker, port, done, 60, "the pipeline's counts")
    assert result.value("ratewatch_stream_write_failures_total") == 0
    assert result.value("ratewatch_stream_last_event_timestamp_seconds") is not None
    assert result.value("ratewatch_outbox_entries_stored_total", outbox="audit") == 0
    # nothing is committed to Kafka here
    assert not result.samples("ratewatch_stream_committed_offset")

    # enough keys with enough checks for two rounds of history (100 rows each): the key
    # model comes due and is fitted by the fitting process, then saved
    busy = [
        Check(tenant, f"busy:{i}", Algorithm.FIXED_WINDOW, 10, 60_000, 1)
        for _ in range(6)
        for i in range(120)
    ]
    asyncio.run(_decide(redis_server.url, keyspace, busy))

    def fitted(s: Scrape) -> bool:
        fits = s.value("ratewatch_detect_model_fit_duration_seconds_count", scope="key")
        return (fits or 0) >= 1 and s.value("ratewatch_detect_model_fits_in_flight") == 0

    result = scrape_until(worker, port, fitted, 60, "the key model's fit")
    assert_detection_cost(result)
    assert (result.value("ratewatch_detect_subjects_tracked", scope="key") or 0) >= 120
    assert (result.value("ratewatch_detect_evaluation_decisions_sum") or 0) >= len(busy)
    assert_described(result, DETECTION_FAMILIES)
    models = tmp_path / "d" / "models"
    wait_until(lambda: any(models.glob("*-key.npz")), 30, "the key model's file", 0.2)
    assert worker.stop(timeout=60) == 0


async def _decide(redis_url: str, keyspace: Keyspace, checks: list[Check]) -> None:
    """Each check through the limiter's Lua script: one stream entry per decision."""
    client = Redis.from_url(redis_url)
    try:
        store = RedisStore(client, keyspace, event_stream=keyspace.events)
        for check in checks:
            await store.decide([check])
    finally:
        await client.aclose()


# -- the options -----------------------------------------------------------------------------


def ratewatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


COMMANDS = {
    "stream": ["stream", "--kafka", "127.0.0.1:1"],
    "detect": ["detect", "--kafka", "127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"],
    "pipeline": ["pipeline", "--redis-url", "redis://127.0.0.1:1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("value", "from_env"), [("99999", False), ("0", False), ("nine", True)])
def test_a_bad_metrics_port_is_a_usage_error_naming_it(
    command: str, value: str, from_env: bool, tmp_path: Path
) -> None:
    args = [*COMMANDS[command], "--data-dir", str(tmp_path)]
    if from_env:
        result = ratewatch(*args, env={"RATEWATCH_METRICS_PORT": value})
    else:
        result = ratewatch(*args, "--metrics-port", value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "--metrics-port" in errors[0]
    assert value in errors[0]
    assert "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ratewatch(*COMMANDS["detect"], "--data-dir", str(tmp_path), "--metrics-port",
                           str(port))  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


# -- the metrics objects, in memory ----------------------------------------------------------


def test_verdicts_are_counted_under_the_names_the_alerts_use() -> None:
    metrics = DetectionMetrics()
    metrics.verdict("ip", "blocked", offence=1)
    metrics.verdict("ip", "blocked", offence=3)
    metrics.verdict("key", "cap_reached")
    metrics.verdict("user_id", "already_blocked")
    exposed = Scrape(generate_latest(metrics.registry).decode())
    counts = {
        (s.labels["scope"], s.labels["action"]): s.value
        for s in exposed.samples("ratewatch_detect_verdicts_total")
        if s.value
    }
    assert counts == {
        ("ip", "created"): 1,
        ("ip", "escalated"): 1,
        ("key", "skipped_cap"): 1,
        ("user_id", "already_blocked"): 1,
    }


def test_the_event_age_appears_with_the_first_event_and_revoked_partitions_disappear() -> None:
    now = [1_700_000_100.0]
    metrics = ConsumerMetrics(clock=lambda: now[0])
    assert (
        Scrape(generate_latest(metrics.registry).decode()).value(
            "ratewatch_stream_last_event_age_seconds"
        )
        is None
    )
    metrics.batch_written(3, 0, 0.01, 1_700_000_000_000)
    metrics.batch_written(2, 1, 0.01, 1_699_999_000_000)  # an older partition's batch
    metrics.partition_committed(0, 40, highwater=45)
    metrics.partition_committed(1, 7, highwater=None)
    exposed = Scrape(generate_latest(metrics.registry).decode())
    assert exposed.value("ratewatch_stream_last_event_age_seconds") == 100.0
    assert exposed.value("ratewatch_stream_lag_records", partition="0") == 5
    assert exposed.value("ratewatch_stream_lag_records", partition="1") is None
    assert exposed.value("ratewatch_stream_committed_offset", partition="1") == 7
    metrics.partitions_revoked([0, 1, 2])
    exposed = Scrape(generate_latest(metrics.registry).decode())
    assert not exposed.samples("ratewatch_stream_committed_offset")
    assert not exposed.samples("ratewatch_stream_lag_records")
    assert exposed.value("ratewatch_stream_events_stored_total") == 5


def test_up_serves_its_pipeline_workers_metrics(
    stack: RatewatchProcess, stack_metrics_port: int, redis_server: RedisServer, tenant: str
) -> None:
    """`up --metrics-port` (the session's stack has one): its checks reach the count."""
    key = create_key(redis_server.url, tenant, admin=True, prefix=STACK_PREFIX)
    before = scrape_until(
        stack, stack_metrics_port, lambda s: s.value("ratewatch_stream_batches_total") is not None,
        60, "the stack's pipeline metrics",
    )  # fmt: skip
    stored = before.value("ratewatch_stream_events_stored_total") or 0
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        for i in range(7):
            response = client.post(
                "/v1/check",
                json={"key": f"user:{i}", "limit": 10, "window": 60},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 200, response.text
    scrape_until(
        stack, stack_metrics_port,
        lambda s: (s.value("ratewatch_stream_events_stored_total") or 0) >= stored + 7,
        60, "the stack's seven decisions to be counted as stored",
    )  # fmt: skip
    # and its detection's, on the same port, once a round has taken decisions in
    result = scrape_until(
        stack, stack_metrics_port,
        lambda s: (s.value("ratewatch_detect_evaluation_decisions_sum") or 0) >= 7,
        60, "the stack's detection to take in decisions",
    )  # fmt: skip
    assert_detection_cost(result)
    assert_described(result, DETECTION_FAMILIES)
