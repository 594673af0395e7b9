"""The limiter's settings, validated once at start; every error names the bad value."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from limiter.api_limits import ApiLimits
from limiter.denial_cache import MAX_ENTRIES as MAX_DENIAL_ENTRIES
from limiter.errors import ConfigError
from limiter.redis_client import check_redis_url
from limiter.state.tenants import FailMode


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    redis_url: str
    data_dir: Path = Path("ratewatch-data")
    host: str = "127.0.0.1"
    port: int = 8080
    key_prefix: str = "rw"
    fail_mode: FailMode = FailMode.OPEN
    redis_timeout: float = 0.25
    # failure isolation: the health probe's own timeout; failed calls in a row that mark
    # Redis down without a failed probe; a store call's payload bound; how often the local
    # copy of blocks (the failure policy's) is refreshed
    health_probe_timeout: float = 0.5
    failures_to_down: int = 3
    call_max_bytes: int = 512 * 1024
    block_mirror_interval: float = 1.0
    auth_cache_ttl: float = 1.0
    max_body_bytes: int = 64 * 1024
    max_batch_body_bytes: int = 2 * 1024 * 1024
    instance: str = field(default_factory=lambda: os.uname().nodename)
    key_secret: bytes | None = None
    # the decision stream: Kafka bootstrap servers ("host:port,..."); None streams nothing
    kafka: str | None = None
    # the disk spool that keeps decision events while Kafka is unreachable
    spool_max_bytes: int = 1 << 30
    # the embedded pipeline: the check script appends every decision to a Redis stream
    redis_events: bool = False
    # past this much of Redis's memory, or with a decision unstored for this long, the
    # stream is reported behind (nothing is dropped)
    backlog_max_bytes: int = 256 << 20
    backlog_max_age: float = 300.0
    # which of several worker processes this is, and where they keep their metrics
    worker: int = 0
    metrics_dir: Path | None = None
    # the analytics store the usage, audit and privacy routes use: a ClickHouse server
    # (http(s)://…) or the chDB directory another process owns (chdb:///…, via its socket)
    clickhouse_url: str | None = None
    # webhooks may target loopback and private addresses (RATEWATCH_WEBHOOKS_ALLOW_PRIVATE)
    webhooks_allow_private: bool = False
    # how often the limiter looks whether Redis lost its data (control/durable/restore.py)
    restore_check_interval: float = 0.5
    # RateWatch's limits on its own API: per tenant on the control plane, per client
    # address on failed authentication (limiter/api_limits.py)
    api_limits: ApiLimits = field(default_factory=ApiLimits)
    # unknown tokens the auth cache remembers at most (valid keys are bounded by the store)
    auth_unknown_entries: int = 1024
    # slow clients: seconds to send a request's headers, then its body (408 after), and
    # to send the next request on a kept-alive connection (closed after)
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    # open connections per process, beyond which requests are answered 503; the bytes
    # a request's headers may take (431 beyond)
    max_connections: int = 1000
    max_header_bytes: int = 64 * 1024
    # a bearer token that /metrics and /health/detailed require; None leaves them open
    metrics_token: str | None = None
    # spans for the check path, exported per the OTEL_* variables (limiter/tracing)
    tracing: bool = False
    # the reverse proxies whose X-Forwarded-For / X-Real-IP name the client (comma
    # separated addresses, networks or *; uvicorn applies X-Forwarded-For, the gate both)
    trusted_proxies: str | None = None
    # the local denial cache (limiter/denial_cache.py): counters known to be over their
    # limit, denied in process until their retry time; 0 turns it off
    denial_cache_entries: int = 0
    # Envoy's rate limit service over gRPC on this port (limiter/grpc/); None: not served.
    # With a certificate and key (cert, key: the HTTPS ones) it is served over TLS.
    grpc_port: int | None = None
    # how many worker processes share the ports (with several, gRPC binds with SO_REUSEPORT)
    workers: int = 1
    grpc_tls: tuple[Path, Path] | None = None

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port!r} is not a TCP port (1-65535)")
        if not 0.001 <= self.redis_timeout <= 60:
            raise ConfigError(f"redis timeout {self.redis_timeout!r}s is not within 0.001-60")
        if not 0.05 <= self.restore_check_interval <= 60:
            raise ConfigError(
                f"restore check interval {self.restore_check_interval!r}s is not within 0.05-60"
            )
        if not 0.001 <= self.health_probe_timeout <= 60:
            raise ConfigError(
                f"health probe timeout {self.health_probe_timeout!r}s is not within 0.001-60"
            )
        if not 1 <= self.failures_to_down <= 1000:
            raise ConfigError(f"failures to down {self.failures_to_down!r} is not within 1-1000")
        if not 64 * 1024 <= self.call_max_bytes <= 64 * 1024 * 1024:
            raise ConfigError(
                f"call max bytes {self.call_max_bytes!r} is not within 65536-67108864"
            )
        if not 0.05 <= self.block_mirror_interval <= 60:
            raise ConfigError(
                f"block mirror interval {self.block_mirror_interval!r}s is not within 0.05-60"
            )
        if not 0 <= self.auth_cache_ttl <= 60:
            raise ConfigError(f"auth cache ttl {self.auth_cache_ttl!r}s is not within 0-60")
        if not 1024 <= self.max_body_bytes <= self.max_batch_body_bytes:
            raise ConfigError(
                f"max body bytes {self.max_body_bytes!r} is not within "
                f"1024-{self.max_batch_body_bytes}"
            )
        if not self.key_prefix or any(c in self.key_prefix for c in "{}: "):
            raise ConfigError(
                f"key prefix {self.key_prefix!r} must be non-empty without {{}}: or spaces"
            )
        if self.key_secret is not None and len(self.key_secret) != 32:
            raise ConfigError("the key secret must be 64 hex characters (32 bytes)")
        if self.kafka is not None:
            check_bootstrap(self.kafka)
        if self.clickhouse_url is not None:
            check_clickhouse_url(self.clickhouse_url)
        if self.spool_max_bytes < 1 << 20:
            raise ConfigError(f"spool max bytes {self.spool_max_bytes!r} is below 1 MiB")
        if self.backlog_max_bytes < 1 << 20:
            raise ConfigError(f"backlog max bytes {self.backlog_max_bytes!r} is below 1 MiB")
        if not 1 <= self.backlog_max_age <= 86400:
            raise ConfigError(f"backlog max age {self.backlog_max_age!r}s is not within 1-86400")
        if not 0 <= self.auth_unknown_entries <= 1_000_000:
            raise ConfigError(
                f"auth unknown entries {self.auth_unknown_entries!r} is not within 0-1000000"
            )
        for name, seconds in (
            ("header timeout", self.header_timeout),
            ("body timeout", self.body_timeout),
            ("keep-alive timeout", self.keep_alive_timeout),
        ):
            if not 0.1 <= seconds <= 3600:  # NaN too: every comparison with it is false
                raise ConfigError(f"{name} {seconds!r}s is not within 0.1-3600")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError(f"max connections {self.max_connections!r} is not within 1-1000000")
        if not 1024 <= self.max_header_bytes <= 1 << 20:
            raise ConfigError(
                f"max header bytes {self.max_header_bytes!r} is not within 1024-{1 << 20}"
            )
        if self.metrics_token is not None:
            check_metrics_token(self.metrics_token)
        for entry in (self.trusted_proxies or "").split(","):
            if entry.strip() not in ("", "*"):
                try:
                    ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    raise ConfigError(
                        f"trusted proxy {entry.strip()!r} is not an address, a network or *"
                    ) from None
        if not 0 <= self.denial_cache_entries <= MAX_DENIAL_ENTRIES:
            raise ConfigError(
                f"denial cache entries {self.denial_cache_entries!r} is not within "
                f"0-{MAX_DENIAL_ENTRIES}"
            )
        if self.grpc_port is not None:
            if not 0 < self.grpc_port < 65536:
                raise ConfigError(f"gRPC port {self.grpc_port!r} is not a TCP port (1-65535)")
            if self.grpc_port == self.port:
                raise ConfigError(f"gRPC port {self.grpc_port} is the HTTP port: use another")


MIN_METRICS_TOKEN = 16


def check_metrics_token(token: str) -> None:
    """A bearer token for /metrics: printable ASCII, 16-256 characters (never quoted)."""
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError("the metrics token must be printable ASCII without spaces")
    if not MIN_METRICS_TOKEN <= len(token) <= 256:
        raise ConfigError(
            f"the metrics token is {len(token)} characters long: use "
            f"{MIN_METRICS_TOKEN}-256 (e.g. `openssl rand -hex 24`)"
        )


def check_bootstrap(servers: str) -> None:
    """Kafka bootstrap servers: ``host[:port]`` separated by commas."""
    for server in servers.split(","):
        host, colon, port = server.strip().rpartition(":")
        if not colon:
            host, port = port, "9092"
        if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"kafka bootstrap server {server.strip()!r} in {servers!r} is not host[:port]"
            )


def check_clickhouse_url(url: str) -> None:
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https", "chdb") or not rest:
        raise ConfigError(
            f"ClickHouse URL {url.split('@')[-1]!r} must start with http://, https:// or chdb:///"
        )


def parse_key_secret(text: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError("RATEWATCH_KEY_SECRET must be 64 hex characters") from None
    if len(secret) != 32:
        raise ConfigError(
            f"RATEWATCH_KEY_SECRET must be 64 hex characters, got {len(text.strip())}"
        )
    return secret


def load_or_create_key_secret(data_dir: Path) -> bytes:
    """The data dir's key hashing secret, created (mode 0600) on first use."""
    path = data_dir / "key-secret"
    if path.exists():
        return parse_key_secret(path.read_text(encoding="ascii"))
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this data dir created it first
        return parse_key_secret(path.read_text(encoding="ascii"))
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secret.hex() + "\n")
    return secret
