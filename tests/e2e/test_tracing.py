"""OpenTelemetry tracing end to end: a real `ratewatch serve --tracing` exporting to an
OTLP/HTTP receiver, its decisions streamed to the session's `ratewatch up` and stored in
chDB, and the Python SDK's client spans.

The traced limiter writes to the session stack's event stream (its key prefix), so the
stack's pipeline stores its decisions: a check's span and its decision row join on the
trace id, as an analyst would join them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from analytics.query_client import query
from limiter.errors import ConfigError
from limiter.tracing import check_tracing
from ratewatch.client import AsyncRateWatch, RateWatch
from tests.support.credentials import STACK_PREFIX, create_key
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter

pytestmark = pytest.mark.timeout(180)

SERVICE = "ratewatch-tracing-test"
SERVER_KIND = 2  # opentelemetry.proto's Span.SpanKind: SERVER
CLIENT_KIND = 3


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced(
    receiver: OtlpReceiver,
    redis_server: RedisServer,
    stack: RatewatchProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RatewatchProcess]:
    """A traced limiter on the stack's keys and event stream, exporting to ``receiver``."""
    process = start_limiter(
        redis_server.url,
        tmp_path_factory.mktemp("traced"),
        "--key-prefix",
        STACK_PREFIX,
        "--redis-events",
        env={
            "RATEWATCH_TRACING": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": SERVICE,
            # export within a tenth of a second rather than the default five
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    yield process
    process.stop()


@pytest.fixture
def key(redis_server: RedisServer, tenant: str) -> str:
    return create_key(redis_server.url, tenant, prefix=STACK_PREFIX)


@pytest.fixture(scope="module")
def sdk_spans() -> InMemorySpanExporter:
    """The test process's tracer provider, as an application using the SDK sets one up."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def spans_of(
    receiver: OtlpReceiver, trace_id: str, name: str, count: int = 1
) -> list[ReceivedSpan]:
    def arrived() -> bool:
        return len([s for s in receiver.of_trace(trace_id) if s.name == name]) >= count

    wait_until(arrived, 30, f"{count} span(s) {name!r} of trace {trace_id}", 0.05)
    return [s for s in receiver.of_trace(trace_id) if s.name == name]


def stored_trace_ids(stack: RatewatchProcess, tenant: str, count: int) -> list[str]:
    """The trace ids of the tenant's decision rows, once ``count`` rows are stored."""
    socket = stack.data_dir / "clickhouse" / "query.sock"  # type: ignore[operator]
    sql = (
        f"SELECT key, trace_id FROM ratewatch.decisions WHERE tenant = '{tenant}' ORDER BY ts, key"
    )
    rows: list[dict[str, str]] = []

    def stored() -> bool:
        rows[:] = query(socket, sql)
        return len(rows) >= count

    wait_until(stored, 60, f"{count} decision rows of {tenant}", 0.2)
    return [row["trace_id"] for row in rows]


def test_a_check_with_traceparent_is_a_child_span_and_its_decision_carries_the_trace_id(
    traced: RatewatchProcess, receiver: OtlpReceiver, stack: RatewatchProcess, key: str, tenant: str
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    answer = httpx.post(
        traced.base_url + "/v1/check",
        json={"key": "user-1", "limit": 5, "window": 60, "ip": "203.0.113.9"},
        headers={"Authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-{parent_id}-01"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.json()["allowed"] is True

    [check] = spans_of(receiver, trace_id, "POST /v1/check")
    assert check.service == SERVICE
    assert check.parent_span_id == parent_id
    assert check.kind == SERVER_KIND
    assert check.attributes["ratewatch.tenant"] == tenant
    assert check.attributes["ratewatch.allowed"] is True
    assert check.attributes["ratewatch.reason"] == "ok"
    assert check.attributes["http.response.status_code"] == 200
    # the caller's identifiers stay out of the trace
    assert "user-1" not in str(check.attributes)
    assert "203.0.113.9" not in str(check.attributes)

    [store] = spans_of(receiver, trace_id, "redis check-script")
    assert store.parent_span_id == check.span_id
    assert store.kind == CLIENT_KIND
    assert store.attributes["db.system.name"] == "redis"
    assert (trace_id, check.span_id) in store.links

    assert stored_trace_ids(stack, tenant, 1) == [trace_id]


def test_a_policy_check_carries_the_trace_id_into_its_decision(
    traced: RatewatchProcess,
    receiver: OtlpReceiver,
    stack: RatewatchProcess,
    redis_server: RedisServer,
    tenant: str,
) -> None:
    admin = create_key(redis_server.url, tenant, admin=True, prefix=STACK_PREFIX)
    headers = {"Authorization": f"Bearer {admin}"}
    created = httpx.put(
        traced.base_url + "/v1/policies/traced",
        json={"limits": [{"limit": 1, "window": 60}, {"limit": 10, "window": 3600}]},
        headers=headers,
        timeout=10,
    )
    assert created.status_code in (200, 201), created.text
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    answers = [
        httpx.post(
            traced.base_url + "/v1/check",
            json={"key": "acct:1", "policy": "traced"},
            headers={**headers, "traceparent": f"00-{trace_id}-{parent_id}-01"},
            timeout=10,
        ).json()["allowed"]
        for _ in range(2)
    ]
    assert answers == [True, False]
    checks = spans_of(receiver, trace_id, "POST /v1/check", count=2)
    assert {span.parent_span_id for span in checks} == {parent_id}
    assert stored_trace_ids(stack, tenant, 2) == [trace_id, trace_id]


def test_batch_without_traceparent_starts_a_trace_of_its_own(
    traced: RatewatchProcess, receiver: OtlpReceiver, stack: RatewatchProcess, key: str, tenant: str
) -> None:
    answer = httpx.post(
        traced.base_url + "/v1/batch",
        json={"checks": [{"key": "a", "limit": 1, "window": 60}] * 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert [r["allowed"] for r in answer.json()["results"]] == [True, False]
    trace_ids = stored_trace_ids(stack, tenant, 2)
    assert trace_ids[0] == trace_ids[1]
    assert len(trace_ids[0]) == 32
    [batch] = spans_of(receiver, trace_ids[0], "POST /v1/batch")
    assert batch.parent_span_id == ""
    assert batch.attributes["ratewatch.checks"] == 2
    assert batch.attributes["ratewatch.denied"] == 1


def test_a_refused_request_is_traced_with_its_status(
    traced: RatewatchProcess, receiver: OtlpReceiver
) -> None:
    trace_id = secrets.token_hex(16)
    answer = httpx.post(
        traced.base_url + "/v1/check",
        json={"key": "k", "limit": 5, "window": 60},
        headers={
            "Authorization": "Bearer rw_not-a-key",
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        },
        timeout=10,
    )
    assert answer.status_code == 401
    [check] = spans_of(receiver, trace_id, "POST /v1/check")
    assert check.attributes["http.response.status_code"] == 401


def test_an_untraced_limiters_decisions_have_no_trace_id(
    stack: RatewatchProcess, key: str, tenant: str
) -> None:
    answer = httpx.post(
        stack.base_url + "/v1/check",
        json={"key": "plain", "limit": 5, "window": 60},
        headers={"Authorization": f"Bearer {key}", "traceparent": f"00-{'1' * 32}-{'2' * 16}-01"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert stored_trace_ids(stack, tenant, 1) == [""]


def test_the_sdk_client_span_is_the_parent_of_the_check_span(
    traced: RatewatchProcess, receiver: OtlpReceiver, sdk_spans: InMemorySpanExporter, key: str
) -> None:
    with RateWatch(api_key=key, base_url=traced.base_url, fail_open=False) as client:
        assert client.check("sdk-user", limit=3, window=60).allowed
    [client_span] = [s for s in sdk_spans.get_finished_spans() if s.name == "POST /v1/check"]
    sdk_spans.clear()
    assert client_span.kind is trace.SpanKind.CLIENT
    assert client_span.attributes is not None
    assert client_span.attributes["http.response.status_code"] == 200
    context = client_span.get_span_context()
    [check] = spans_of(receiver, format_trace_id(context.trace_id), "POST /v1/check")
    assert check.parent_span_id == format_span_id(context.span_id)


async def test_the_async_client_traces_a_batch(
    traced: RatewatchProcess, receiver: OtlpReceiver, sdk_spans: InMemorySpanExporter, key: str
) -> None:
    async with AsyncRateWatch(api_key=key, base_url=traced.base_url, fail_open=False) as client:
        results = await client.batch([{"key": "b", "limit": 1, "window": 60}] * 2)
    assert [r.allowed for r in results] == [True, False]
    [client_span] = [s for s in sdk_spans.get_finished_spans() if s.name == "POST /v1/batch"]
    sdk_spans.clear()
    context = client_span.get_span_context()
    [batch] = spans_of(receiver, format_trace_id(context.trace_id), "POST /v1/batch")
    assert batch.parent_span_id == format_span_id(context.span_id)


def test_the_sdk_sends_no_trace_when_opentelemetry_is_disabled(
    traced: RatewatchProcess,
    sdk_spans: InMemorySpanExporter,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with RateWatch(api_key=key, base_url=traced.base_url, fail_open=False) as client:
        assert client.check("off", limit=3, window=60).allowed
    assert sdk_spans.get_finished_spans() == ()


def test_an_unsupported_exporter_is_refused_at_start_naming_the_variable(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "ratewatch", "serve", "--tracing", "--port", str(free_port()),
         "--redis-url", redis_server.url,
         "--data-dir", str(tmp_path_factory.mktemp("refused"))],
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert finished.returncode != 0
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_with_tracing_off_the_limiter_loads_none_of_its_tracing_code() -> None:
    probe = (
        "import sys, control.app, limiter.http.checks, ratewatch.cli.serve; "
        "print(sorted(m for m in sys.modules if m.startswith('limiter.tracing.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("asked", "environ", "on"),
    [
        (False, {}, False),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        (True, {}, True),
        (True, {"OTEL_SDK_DISABLED": "true"}, False),
        (True, {"OTEL_SDK_DISABLED": "TRUE "}, False),
        (True, {"OTEL_SDK_DISABLED": "false"}, True),
        (True, {"OTEL_TRACES_EXPORTER": "console"}, True),
        (True, {"OTEL_TRACES_EXPORTER": "none"}, True),
        (True, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
    ],
)
def test_tracing_is_on_only_when_asked_and_not_disabled(
    asked: bool, environ: dict[str, str], on: bool
) -> None:
    assert check_tracing(asked, environ) is on


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ],
)
def test_what_the_extra_does_not_ship_is_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"{variable}='{value}' is not supported"):
        check_tracing(True, {variable: value})
