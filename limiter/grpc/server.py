"""The gRPC server of the rate limit service, in the limiter's own process and event loop.

Started and stopped by the limiter app's lifespan (``control/app.py``) when ``--grpc-port``
is given.  Several workers (``serve --workers N``) each run one on the same port with
``SO_REUSEPORT``, and the kernel spreads the gateways' connections among them; a single
process binds the port alone, so a port another program holds is an error at start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ratelimit.v3.rls_pb2_grpc import add_RateLimitServiceServicer_to_server

from limiter.errors import ConfigError
from limiter.grpc.service import RateLimitService

log = logging.getLogger("ratewatch.limiter")

# calls in flight get this long to finish when the limiter stops
STOP_GRACE_SECONDS = 5.0


class RlsServer:
    def __init__(
        self,
        service: RateLimitService,
        host: str,
        port: int,
        *,
        share_port: bool,
        max_message_bytes: int,
        tls: tuple[Path, Path] | None = None,
    ):
        self._service = service
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._share_port = share_port
        self._max_message_bytes = max_message_bytes
        self._tls = tls
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.so_reuseport", 1 if self._share_port else 0),
            # a request is a few descriptors: bounded like the HTTP check's body
            ("grpc.max_receive_message_length", self._max_message_bytes),
        ]
        server = grpc.aio.server(options=options)
        add_RateLimitServiceServicer_to_server(self._service, server)
        try:
            if self._tls is None:
                server.add_insecure_port(self._address)
            else:
                cert, key = self._tls
                credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
                server.add_secure_port(self._address, credentials)
        except RuntimeError as exc:  # grpc's own: "Failed to bind to address ..."
            raise ConfigError(f"cannot serve gRPC on {self._address}: {exc}") from None
        await server.start()
        self._server = server
        log.info("rate limit service (gRPC) listening on %s", self._address)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(STOP_GRACE_SECONDS)
            self._server = None
