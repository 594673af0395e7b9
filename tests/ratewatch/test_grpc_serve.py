"""`ratewatch serve --grpc-port`: the port shared by the workers, and the one-line errors
of a port that cannot be served."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub
from envoy.type.v3.ratelimit_unit_pb2 import RateLimitUnit

from tests.support.credentials import KEY_SECRET
from tests.support.polling import wait_until
from tests.support.servers import RedisServer, free_port, start_limiter

pytestmark = pytest.mark.timeout(90)


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (state 0A in /proc/net/tcp{,6}: gRPC listens on an
    IPv6 socket with the v4-mapped address): one per process that bound it."""
    lines = [
        line
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
    ]
    return sum(
        1
        for line in lines
        if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == port
    )


async def call_on_a_new_connection(port: int, api_key: str) -> int:
    request = RateLimitRequest(
        domain="workers",
        descriptors=[
            RateLimitDescriptor(
                entries=[RateLimitDescriptor.Entry(key="user", value="w")],
                limit=RateLimitDescriptor.RateLimitOverride(
                    requests_per_unit=5, unit=RateLimitUnit.HOUR
                ),
            )
        ],
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await RateLimitServiceStub(channel).ShouldRateLimit(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
        )
    code: int = response.overall_code
    return code


def test_workers_share_the_grpc_port_and_the_limits(
    redis_server: RedisServer, standard_key: str, tmp_path: Path
) -> None:
    grpc_port = free_port()
    # the port from the environment, as every option may come
    service = start_limiter(
        redis_server.url, tmp_path, "--workers", "2", env={"RATEWATCH_GRPC_PORT": str(grpc_port)}
    )
    try:
        # each worker listens (the second may start a moment after the first answered)
        wait_until(lambda: listeners(grpc_port) == 2, 20, "both workers on the gRPC port")

        async def twelve() -> list[int]:
            return [await call_on_a_new_connection(grpc_port, standard_key) for _ in range(12)]

        codes = asyncio.run(twelve())
        assert codes.count(RateLimitResponse.OK) == 5  # one limit, whichever worker answers
        assert codes.count(RateLimitResponse.OVER_LIMIT) == 7
    finally:
        assert service.stop(signal.SIGTERM) == 0
    assert listeners(grpc_port) == 0


def serve(
    redis_url: str, tmp_path: Path, *args: str, command: str = "serve"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", command, "--redis-url", redis_url,
         "--data-dir", str(tmp_path / "data"), *args],
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_a_grpc_port_that_cannot_be_served_is_a_one_line_error(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    same = serve(redis_server.url, tmp_path, "--port", str(port), "--grpc-port", str(port))
    assert same.returncode == 1
    assert same.stderr.strip().splitlines() == [
        f"Error: gRPC port {port} is the HTTP port: use another"
    ]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        held = serve(redis_server.url, tmp_path, "--port", str(port), "--grpc-port", str(busy))
    assert held.returncode == 1
    assert held.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{busy} (gRPC): Address already in use"
    ]
    assert "Traceback" not in held.stderr + same.stderr


def test_up_refuses_a_grpc_port_it_cannot_serve_before_starting_anything(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        held = serve(
            redis_server.url, tmp_path, "--port", str(port), "--grpc-port", str(busy), command="up"
        )
    assert held.returncode == 1
    assert held.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{busy} (gRPC): Address already in use"
    ]
    assert not (tmp_path / "data" / "run").exists()  # no child was started
    same = serve(
        redis_server.url, tmp_path, "--port", str(port), "--grpc-port", str(port), command="up"
    )
    assert same.returncode == 2  # a usage error, naming the option
    assert f"Invalid value for '--grpc-port': {port} is the HTTP port" in same.stderr
