"""The compose stack's services run for real with the environment compose gives them.

There is no Docker engine here, so each process runs on this machine as the container
would run it: the service's ``command`` after the image's entrypoint (``python -m
ratewatch``), with the image's ``ENV`` and the service's ``environment`` interpolated with
test secrets.  Only what names the container world is replaced: the service hosts by local
servers (Valkey by a Redis-protocol server started with the compose file's own
``--requirepass`` command line, Kafka by the session's broker, the ClickHouse server by
chDB, whose accounts tests/compose/test_clickhouse_accounts.py checks), the ports and the
data directory by the test's own, and 0.0.0.0 by 127.0.0.1.  The image's HEALTHCHECK
command then runs against each process.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.compose import environment, healthcheck, image_env, interpolate, services
from tests.support.kafka import KafkaBroker
from tests.support.otlp import OtlpReceiver
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, free_port, redis_binary, terminate

pytestmark = pytest.mark.timeout(180)

SECRETS = {
    "RATEWATCH_KEY_SECRET": secrets.token_hex(32),
    "RATEWATCH_VALKEY_PASSWORD": secrets.token_hex(24),
    "RATEWATCH_CLICKHOUSE_PASSWORD": secrets.token_hex(24),
    "RATEWATCH_CLICKHOUSE_MIGRATE_PASSWORD": secrets.token_hex(24),
    "RATEWATCH_ANALYST_PASSWORD": secrets.token_hex(16),
    "RATEWATCH_GRAFANA_DB_PASSWORD": secrets.token_hex(16),
    "RATEWATCH_GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
    "RATEWATCH_BOOTSTRAP_KEY": "rwk_" + secrets.token_hex(24),
    "RATEWATCH_METRICS_TOKEN": secrets.token_hex(24),
}
# the ClickHouse server of the compose network; chDB here
WRITER_URL = f"http://ratewatch:{SECRETS['RATEWATCH_CLICKHOUSE_PASSWORD']}@clickhouse:8123"
PASSWORDS = [value for name, value in SECRETS.items() if name != "RATEWATCH_BOOTSTRAP_KEY"]


class Valkey:
    """The compose file's valkey command, on a local port."""

    def __init__(self, workdir: Path) -> None:
        command = [interpolate(str(arg), SECRETS) for arg in services()["valkey"]["command"]]
        assert command[0] == "valkey-server"
        self.port = free_port()
        self.argv = [redis_binary(), *command[1:]]
        self.argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.argv += ["--dir", str(workdir)]
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self, password: str | None) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client(SECRETS["RATEWATCH_VALKEY_PASSWORD"]) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        terminate(self.process)


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    server = Valkey(tmp_path_factory.mktemp("valkey"))
    try:
        wait_until(server.answers, 15, f"valkey with a password on {server.port}", 0.05)
        yield server
    finally:
        server.stop()


def service_env(
    name: str, replacements: Mapping[str, str], exported: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What the service's container has in its environment, with ``replacements`` made in
    every value: the image's ENV, then the service's environment, interpolated with the test
    secrets and what the operator ``exported`` besides."""
    env = {**image_env(), **environment(services()[name], {**SECRETS, **(exported or {})})}
    for old in replacements:
        # a replacement that matches nothing would leave a container name in place
        assert any(old in value for value in env.values()), (name, old)
    for variable, value in env.items():
        for old, new in replacements.items():
            value = value.replace(old, new)
        env[variable] = value
    return env


def local(env: Mapping[str, str]) -> dict[str, str]:
    """This machine's environment less its RATEWATCH_* variables, plus ``env``."""
    own = {name: value for name, value in os.environ.items() if not name.startswith("RATEWATCH_")}
    return {**own, **env}


def health(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command in a container with ``env``."""
    command = healthcheck()
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:]],
        env=local(env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def container_world(valkey: Valkey, data_dir: Path) -> dict[str, str]:
    return {
        "@valkey:6379": f"@127.0.0.1:{valkey.port}",
        "/data": str(data_dir),
        "0.0.0.0": "127.0.0.1",
    }


def test_the_valkey_command_requires_the_password_and_hides_it(valkey: Valkey) -> None:
    password = SECRETS["RATEWATCH_VALKEY_PASSWORD"]
    assert password in valkey.argv  # from the environment, through compose
    with valkey.client(None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with valkey.client("not-" + password) as wrong, pytest.raises(redis.AuthenticationError):
        wrong.ping()
    with valkey.client(password) as client:
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    # the server replaces its process title at start: the password is not in ps
    assert password not in cmdline(valkey.process.pid)


def test_the_limiter_starts_with_the_compose_environment(
    valkey: Valkey, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(
        "limiter",
        {
            **container_world(valkey, tmp_path / "data"),
            "kafka:9092": kafka_broker.bootstrap,
            WRITER_URL: f"chdb://{tmp_path / 'clickhouse'}",
        },
    )
    env["RATEWATCH_PORT"] = str(port)
    assert env["RATEWATCH_HOST"] == "127.0.0.1"  # 0.0.0.0 in the container
    limiter = RatewatchProcess(
        services()["limiter"]["command"], port, env=local(env), log_path=tmp_path / "serve.log"
    )
    try:
        limiter.start(timeout=60)
        assert limiter.process is not None
        assert health(env).returncode == 0
        # the bootstrap key, registered in Valkey over the authenticated connection
        response = httpx.post(
            limiter.base_url + "/v1/check",
            json={"key": "user:1", "limit": 5, "window": 60},
            headers={"Authorization": f"Bearer {SECRETS['RATEWATCH_BOOTSTRAP_KEY']}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["allowed"] is True
        # the health check needs no token; the metrics do, once one is set
        metrics = httpx.get(limiter.base_url + "/metrics", timeout=10)
        assert metrics.status_code == 401
        token = {"Authorization": f"Bearer {SECRETS['RATEWATCH_METRICS_TOKEN']}"}
        assert httpx.get(limiter.base_url + "/metrics", headers=token, timeout=10).is_success
        argv = cmdline(limiter.process.pid)
        log = (tmp_path / "serve.log").read_text()
        for password in PASSWORDS:
            assert password not in argv
            assert password not in log
        assert "Redis: redis://:***@127.0.0.1" in log
    finally:
        limiter.stop()
    failed = health(env)
    assert failed.returncode != 0
    assert "Connection refused" in failed.stderr


def test_the_limiter_serves_grpc_and_traces_when_the_operator_asks(
    valkey: Valkey, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """RATEWATCH_GRPC_PORT and RATEWATCH_TRACING exported, and the OTEL_* variables of the
    override file the README shows: Envoy's rate limit service answers on the port, and the
    check path's spans reach the collector."""
    import grpc
    from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
    from envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
    from envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub
    from envoy.type.v3.ratelimit_unit_pb2 import RateLimitUnit

    port, grpc_port = free_port(), free_port()
    receiver = OtlpReceiver().start()
    env = service_env(
        "limiter",
        {
            **container_world(valkey, tmp_path / "data"),
            "kafka:9092": kafka_broker.bootstrap,
            WRITER_URL: f"chdb://{tmp_path / 'clickhouse'}",
        },
        {"RATEWATCH_GRPC_PORT": str(grpc_port), "RATEWATCH_TRACING": "1"},
    )
    assert (env["RATEWATCH_GRPC_PORT"], env["RATEWATCH_TRACING"]) == (str(grpc_port), "1")
    env["RATEWATCH_PORT"] = str(port)
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    env["OTEL_SERVICE_NAME"] = "ratewatch-limiter"
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    limiter = RatewatchProcess(
        services()["limiter"]["command"], port, env=local(env), log_path=tmp_path / "serve.log"
    )
    try:
        limiter.start(timeout=60)
        descriptor = RateLimitDescriptor(
            entries=[RateLimitDescriptor.Entry(key="user", value="1")],
            limit=RateLimitDescriptor.RateLimitOverride(
                requests_per_unit=1, unit=RateLimitUnit.MINUTE
            ),
        )
        request = RateLimitRequest(domain="edge", descriptors=[descriptor])
        bearer = (("authorization", f"Bearer {SECRETS['RATEWATCH_BOOTSTRAP_KEY']}"),)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = RateLimitServiceStub(channel)
            codes = [
                stub.ShouldRateLimit(request, metadata=bearer, timeout=10).overall_code
                for _ in range(2)
            ]
        assert codes == [RateLimitResponse.OK, RateLimitResponse.OVER_LIMIT]

        trace_id = secrets.token_hex(16)
        response = httpx.post(
            limiter.base_url + "/v1/check",
            json={"key": "user:2", "limit": 5, "window": 60},
            headers={
                "Authorization": f"Bearer {SECRETS['RATEWATCH_BOOTSTRAP_KEY']}",
                "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            },
            timeout=10,
        )
        assert response.status_code == 200, response.text

        def traced() -> bool:
            return any(span.name == "POST /v1/check" for span in receiver.of_trace(trace_id))

        wait_until(traced, 30, f"the check's span of trace {trace_id}", 0.1)
        assert {span.service for span in receiver.of_trace(trace_id)} == {"ratewatch-limiter"}
    finally:
        limiter.stop()
        receiver.stop()


def test_the_consumer_and_the_detector_start_with_the_compose_environment(
    valkey: Valkey, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    suffix = secrets.token_hex(4)
    processes = {}
    envs = {}
    try:
        for name in ("stream", "detect"):
            env = service_env(
                name,
                {
                    **container_world(valkey, tmp_path / name),
                    "kafka:9092": kafka_broker.bootstrap,
                }
                # the detector never connects to ClickHouse
                | ({WRITER_URL: f"chdb://{tmp_path / 'clickhouse'}"} if name == "stream" else {}),
            )
            env["RATEWATCH_METRICS_PORT"] = str(free_port())
            # the session's broker is shared: a group of this test's own
            env["RATEWATCH_GROUP"] = f"compose-{name}-{suffix}"
            envs[name] = env
            processes[name] = RatewatchProcess(
                services()[name]["command"],
                0,
                env=local(env),
                log_path=tmp_path / f"{name}.log",
            ).launch()
        for name, process in processes.items():

            def healthy(name: str = name, process: RatewatchProcess = process) -> bool:
                assert process.process is not None
                assert process.process.poll() is None, process.log()
                return health(envs[name]).returncode == 0

            wait_until(healthy, 90, f"the {name} service's health check", 0.5)
            assert process.process is not None
            argv = cmdline(process.process.pid)
            for password in PASSWORDS:
                assert password not in argv, name
                assert password not in (tmp_path / f"{name}.log").read_text(), name
    finally:
        for process in processes.values():
            process.stop(timeout=30)
    for name in processes:
        assert health(envs[name]).returncode != 0, name
