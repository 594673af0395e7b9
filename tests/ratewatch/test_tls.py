"""HTTPS on ``ratewatch serve`` (``--tls-cert``/``--tls-key``): a real limiter with a
certificate made by the test, asked over TLS by httpx, the SDK and raw sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ratewatch.client import RateWatch
from ratewatch.errors import ServiceUnavailable
from ratewatch.processes.tls import TlsFiles, server_context
from tests.support.credentials import KEY_SECRET, create_key
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter
from tests.support.tls import CertFiles, self_signed


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_limiter(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, certificate: CertFiles
) -> Iterator[RatewatchProcess]:
    process = start_limiter(
        redis_server.url,
        tmp_path_factory.mktemp("https-limiter"),
        "--tls-cert",
        str(certificate.cert),
        "--tls-key",
        str(certificate.key),
        ca_file=certificate.cert,
    )
    yield process
    process.stop()


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    """The TLS version a handshake with ``context`` agrees on."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


def _client_context(certificate: CertFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate.cert))


def test_serves_https_and_prefers_tls_1_3(
    https_limiter: RatewatchProcess, certificate: CertFiles, redis_server: RedisServer, tenant: str
) -> None:
    key = create_key(redis_server.url, tenant)
    with httpx.Client(verify=https_limiter.verify, timeout=5) as client:
        response = client.post(
            https_limiter.base_url + "/v1/check",
            json={"key": "k", "limit": 5, "window": 60},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert https_limiter.base_url.startswith("https://")
    assert response.status_code == 200, response.text
    assert response.json()["remaining"] == 4
    assert _handshake(https_limiter.port, _client_context(certificate)) == "TLSv1.3"
    at_most_1_2 = _client_context(certificate)
    at_most_1_2.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(https_limiter.port, at_most_1_2) == "TLSv1.2"


def test_refuses_tls_1_1(https_limiter: RatewatchProcess, certificate: CertFiles) -> None:
    # a client able to speak TLS 1.1 (security level 0 lets OpenSSL 3 offer it), and only it
    old = _client_context(certificate)
    with warnings.catch_warnings():  # deprecated, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _handshake(https_limiter.port, old)


def test_refuses_plain_http(https_limiter: RatewatchProcess) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_limiter.port}/health", timeout=5)


def test_the_sdk_checks_over_https_with_a_ca_file(
    https_limiter: RatewatchProcess, certificate: CertFiles, redis_server: RedisServer, tenant: str
) -> None:
    key = create_key(redis_server.url, tenant)
    with RateWatch(key, https_limiter.base_url, fail_open=False, ca_file=certificate.cert) as rw:
        assert rw.check("sdk", limit=2, window=60).remaining == 1
    with RateWatch(
        key, https_limiter.base_url, fail_open=False, verify=_client_context(certificate)
    ) as rw:
        assert rw.check("sdk", limit=2, window=60).remaining == 0
    # the system's CAs do not vouch for a self-signed certificate
    with (
        RateWatch(key, https_limiter.base_url, fail_open=False) as rw,
        pytest.raises(ServiceUnavailable),
    ):
        rw.check("sdk", limit=2, window=60)


def test_the_server_context_sets_tls_1_2_as_the_minimum(certificate: CertFiles) -> None:
    context = server_context(TlsFiles(certificate.cert, certificate.key))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def _refused(args: list[str], tmp_path: Path) -> str:
    """The one-line error of a command that must stop before it starts anything."""
    done = subprocess.run(
        [sys.executable, "-m", "ratewatch", *args, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
    )
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not (tmp_path / "data" / "run").exists()
    return lines[0]


@pytest.mark.parametrize("command", ["serve", "up"])
def test_bad_tls_files_stop_the_start_with_one_line(
    command: str, certificate: CertFiles, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = str(free_port())
    base = [command, "--port", port, "--redis-url", redis_server.url]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = self_signed(tmp_path / "other")

    only_cert = _refused([*base, "--tls-cert", str(certificate.cert)], tmp_path)
    assert "--tls-cert needs --tls-key" in only_cert
    only_key = _refused([*base, "--tls-key", str(certificate.key)], tmp_path)
    assert "--tls-key needs --tls-cert" in only_key
    missing = tmp_path / "missing.pem"
    unreadable = _refused(
        [*base, "--tls-cert", str(missing), "--tls-key", str(certificate.key)], tmp_path
    )
    assert f"--tls-cert '{missing}': cannot read it" in unreadable
    invalid = _refused(
        [*base, "--tls-cert", str(garbage), "--tls-key", str(certificate.key)], tmp_path
    )
    assert "holds no PEM certificate" in invalid
    mismatched = _refused(
        [*base, "--tls-cert", str(certificate.cert), "--tls-key", str(other.key)], tmp_path
    )
    assert "are not a certificate and its private key" in mismatched


@pytest.mark.timeout(180)
def test_up_serves_https_and_passes_its_limits_on(
    certificate: CertFiles, redis_server: RedisServer, tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()
    log = tmp_path / "up.log"
    service = RatewatchProcess(
        ["up", "--port", str(port), "--redis-url", redis_server.url,
         "--key-prefix", "rwtls", "--data-dir", str(tmp_path / "data"),
         "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key),
         "--auth-failure-limit", "1/1m", "--grpc-port", str(grpc_port)],
        port,
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
        log_path=log,
        ca_file=certificate.cert,
    )  # fmt: skip
    try:
        service.start(timeout=90)
        assert f"RateWatch listening on https://127.0.0.1:{port}" in log.read_text()
        with httpx.Client(base_url=service.base_url, verify=service.verify, timeout=10) as client:
            assert client.get("/v1/keys").status_code == 401
            assert client.get("/v1/keys").status_code == 429
        # Envoy's rate limit service, passed on to the limiter, over TLS with the same cert
        api_key = create_key(redis_server.url, "tls-grpc", prefix="rwtls")
        assert asyncio.run(rls_over_tls(grpc_port, certificate, api_key)) == "OK"
    finally:
        service.stop(timeout=60)


async def rls_over_tls(port: int, certificate: CertFiles, api_key: str) -> str:
    import grpc
    from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
    from envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
    from envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub

    credentials = grpc.ssl_channel_credentials(certificate.cert.read_bytes())
    request = RateLimitRequest(
        domain="tls",
        descriptors=[RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="a", value="b")])],
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        response = await RateLimitServiceStub(channel).ShouldRateLimit(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
        )
    name: str = RateLimitResponse.Code.Name(response.overall_code)
    return name
