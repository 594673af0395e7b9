"""Liveness, dependency status and Prometheus metrics.

``/health`` is always open (load balancers and ``ratewatch up`` probe it).  The dependency
status and the metrics tell an attacker about the deployment, so with a metrics token
they answer only a request that presents it as ``Authorization: Bearer <token>``."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.http import json_response
from limiter.failover import StoreHealth
from limiter.http.asgi import bearer_token
from limiter.http.problems import Problem
from limiter.metrics import LimiterMetrics
from limiter.state.tenants import FailMode
from stream.backlog import BacklogReport
from webhooks.metrics import WebhookMetrics


class HealthRoutes:
    def __init__(
        self,
        redis: Redis,
        health: StoreHealth,
        metrics: LimiterMetrics,
        fail_mode: FailMode,
        instance: str,
        version: str,
        blocks_copy: Callable[[], dict[str, object]] | None = None,
        policies_copy: Callable[[], dict[str, object]] | None = None,
        decision_stream: Callable[[], dict[str, object]] | None = None,
        webhook_metrics: WebhookMetrics | None = None,
        stream_backlog: BacklogReport | None = None,
        outage_spool: Callable[[], dict[str, object]] | None = None,
        token: str | None = None,
    ):
        self._outage_spool = outage_spool  # what the failure policy answered, not yet streamed
        self._token = None if token is None else token.encode()
        self._decision_stream = decision_stream
        self._stream_backlog = stream_backlog  # the embedded decision stream's
        self._webhook_metrics = webhook_metrics
        self._redis = redis
        self._health = health
        self._metrics = metrics
        self._fail_mode = fail_mode
        self._instance = instance
        self._version = version
        self._blocks_copy = blocks_copy  # the failure policy's local copy of the blocks
        self._policies_copy = policies_copy  # the policies a check by policy reads

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/health/detailed", self.detailed, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    def _require_token(self, request: Request) -> None:
        if self._token is None:
            return
        presented = bearer_token(request.scope)
        # compared in constant time: the answer's timing tells nothing about the token
        if presented is None or not hmac.compare_digest(presented.encode("latin-1"), self._token):
            raise Problem(
                401, "unauthorized", "send the metrics token as 'Authorization: Bearer <token>'"
            )

    async def detailed(self, request: Request) -> Response:
        self._require_token(request)
        redis: dict[str, object] = {"status": "up" if self._health.up else "down"}
        if self._health.up:
            started = time.perf_counter()
            try:
                await self._redis.ping()
                redis["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            except Exception as exc:  # reported, not raised: this is the status page
                redis.update(status="down", error=str(exc))
        else:
            redis.update(error=self._health.last_error, down_since=self._health.down_since)
        if self._blocks_copy is not None:
            redis["blocks_copy"] = self._blocks_copy()
        if self._policies_copy is not None:
            redis["policies_copy"] = self._policies_copy()
        degraded = redis["status"] != "up"
        dependencies: dict[str, object] = {"redis": redis}
        if self._decision_stream is not None:  # status "spooling" while Kafka is away
            stream = self._decision_stream()
            dependencies["decision_stream"] = stream
            degraded = degraded or stream["status"] != "up"
        if self._stream_backlog is not None:  # status "behind" past its bounds
            backlog: dict[str, object] = {"status": "unknown", "error": "Redis is down"}
            if redis["status"] == "up":
                backlog = await self._stream_backlog.status()
            dependencies["decision_stream"] = backlog
            degraded = degraded or backlog["status"] != "up"
        if self._outage_spool is not None:  # "spooling" or "replaying" while it holds any
            spool = self._outage_spool()
            dependencies["outage_spool"] = spool
            degraded = degraded or spool["status"] != "up"
        return json_response(
            {
                "status": "degraded" if degraded else "ok",
                "instance": self._instance,
                "version": self._version,
                "fail_mode": self._fail_mode.value,
                "dependencies": dependencies,
            }
        )

    async def metrics(self, request: Request) -> Response:
        self._require_token(request)
        self._metrics.flush()  # what this process counted since the last flush, too
        body = generate_latest(self._metrics.exposition)
        # read from Redis, so not while it is known to be down: a scrape never waits on it
        if self._webhook_metrics is not None and self._health.up:
            body += await self._webhook_metrics.exposition()
        if self._stream_backlog is not None and self._health.up:
            body += await self._stream_backlog.exposition()
        return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})
