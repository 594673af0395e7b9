"""The limiter's ASGI application.

``create_app`` returns an app whose lifespan creates the Redis client and every component
from the settings; the check routes are served by a raw ASGI fast path, everything else
by Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.gateway import open_analytics
from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.fallback import DurableKeys
from control.durable.records import DurableRecords
from control.durable.restore import Restorer
from control.durable.stores import open_journal
from control.http import json_response, problem_for
from control.openapi import build_openapi
from control.privacy import PrivacyRequests
from control.routes import RouteGroup
from control.routes.allowlist import AllowlistRoutes
from control.routes.analytics import AnalyticsRoutes
from control.routes.blocks import BlockRoutes
from control.routes.console import ConsoleAssets, ConsoleRoutes
from control.routes.health import HealthRoutes
from control.routes.incidents import IncidentRoutes
from control.routes.keys import KeyRoutes
from control.routes.policies import PolicyRoutes
from control.routes.privacy import PrivacyRoutes
from control.routes.settings import SettingsRoutes
from control.routes.webhooks import WebhookRoutes
from control.shutdown import bounded_step, cancel_tasks
from detectors.incident_store import IncidentStore
from limiter.algorithms import Algorithm
from limiter.api_limits import ApiLimiter
from limiter.auth import Authenticator
from limiter.coalescer import Coalescer
from limiter.deadline import CallDeadline
from limiter.denial_cache import CachedSubmit, DenialCache
from limiter.denial_stream import DenialStream
from limiter.emit import DecisionSink, NullSink
from limiter.errors import LimiterError, StoreUnavailable
from limiter.failover import FailoverDecider, Primary, StoreHealth
from limiter.http.asgi import Scope, respond
from limiter.http.checks import CheckHandler
from limiter.http.forwarded import TrustedProxies, is_gate_path
from limiter.http.gate import GateHandler
from limiter.http.lane import CheckLane
from limiter.http.problems import Problem
from limiter.keyspace import Keyspace
from limiter.metrics import LimiterMetrics
from limiter.outage.recorder import OutageRecorder
from limiter.outage.replay import StreamReplay
from limiter.policies.cache import PolicyCache
from limiter.redis_client import connect, is_cluster, redis_from_url
from limiter.settings import LimiterSettings
from limiter.sinks import StreamSink
from limiter.state.allowlist import Allowlist
from limiter.state.apikeys import KeyHasher, KeyStore
from limiter.state.block_mirror import BlockMirror
from limiter.state.blocks import BlockStore
from limiter.state.bootstrap import bootstrap
from limiter.state.privacy import UserDataStore
from limiter.state.tenants import TenantSettingsStore
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore
from limiter.store.script_pipe import script_pipe
from limiter.tracing import start_tracing
from stream.audit_outbox import AuditOutbox
from stream.backlog import BacklogReport
from webhooks.metrics import WebhookMetrics
from webhooks.queue import DeliveryQueue
from webhooks.registry import WebhookStore
from webhooks.sealing import SecretSealer
from webhooks.stats import DeliveryStats
from webhooks.updates import WebhookUpdater

if TYPE_CHECKING:
    from limiter.grpc.server import RlsServer

log = logging.getLogger("ratewatch.limiter")

# Container objects allocated beyond those freed before the collector's youngest generation
# is collected (CPython's default: 700). A batch of checks keeps thousands of tuples alive
# until it is answered, so at 700 the collector ran about once every two `/v1/batch`
# requests and took a tenth of the limiter's CPU under batch load; at 20,000 it runs once
# in thousands. Reference cycles, rare on the check path, are collected later.
GC_GEN0_THRESHOLD = 20_000

try:
    VERSION = version("ratewatch")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


class LimiterApp:
    def __init__(
        self,
        settings: LimiterSettings,
        key_secret: bytes,
        sink_factory: Callable[[], DecisionSink] = NullSink,
        bootstrap_key: str | None = None,
        bootstrap: bool = True,
        on_new_key: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self._key_secret = key_secret
        self._sink_factory = sink_factory
        self._bootstrap_key = bootstrap_key
        self._bootstrap = bootstrap
        self._on_new_key = on_new_key
        self.metrics = LimiterMetrics(multiprocess_dir=settings.metrics_dir)
        self._checks: CheckHandler | None = None
        self._gate: GateHandler | None = None
        # the requests serve's protocol answers without a task (limiter/http/lane.py)
        self.check_lane: CheckLane | None = None
        self.policies: PolicyCache | None = None  # once started
        handlers = {
            kind: self._on_error for kind in (Problem, LimiterError, HTTPException, Exception)
        }
        self._starlette = Starlette(lifespan=self._lifespan, exception_handlers=handlers)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        checks = self._checks
        if checks is not None and scope["type"] == "http":
            path = scope["path"]
            handler = (
                (
                    checks.check
                    if path == "/v1/check"
                    else (checks.batch if path == "/v1/batch" else None)
                )
                if scope["method"] == "POST"
                else None
            )
            if handler is None and self._gate is not None and is_gate_path(path):
                # any method: a proxy may ask with its client's (Envoy with its path too)
                handler = self._gate.gate
            if handler is not None:
                try:
                    await handler(scope, receive, send)
                except Exception as exc:
                    problem = self._problem_of(exc)
                    status, body, headers = problem.status, problem.body(path), problem.headers()
                    # a Problem raised is ``exc`` itself, whose traceback holds this frame:
                    # kept in a local, it would make a cycle that only the collector frees,
                    # holding the request's scope (its headers: a huge token) until it runs
                    del problem
                    await respond(send, status, body, headers)
                return
        await self._starlette(scope, receive, send)

    def _problem_of(self, exc: Exception) -> Problem:
        """The answer to a check request that raised ``exc``, counted (and logged if it is
        not a problem of the request's)."""
        problem = problem_for(exc)
        if problem is None:
            log.exception("check request failed", exc_info=exc)
            problem = Problem(500, "internal-error", "the server failed; see its log")
        self.metrics.http_errors.labels(str(problem.status)).inc()
        return problem

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        # decided once: with tracing off nothing of OpenTelemetry is loaded
        tracing = start_tracing(settings.tracing)
        redis = await connect(settings.redis_url, settings.redis_timeout)
        keyspace = Keyspace(settings.key_prefix)
        keys = KeyStore(redis, keyspace, KeyHasher(self._key_secret))
        await keys.verify_secret()
        tenant_settings = TenantSettingsStore(redis, keyspace)
        blocks = BlockStore(redis, keyspace)
        allowlist = Allowlist(redis, keyspace)
        # webhook signing secrets sealed at rest, in Redis and in the durable copy alike
        sealer = SecretSealer(self._key_secret)
        webhook_store = WebhookStore(redis, keyspace, sealer)
        journal = open_journal(settings.data_dir, settings.clickhouse_url)
        restorer = Restorer(
            redis,
            keyspace,
            journal,
            sealer,
            keys=keys,
            tenant_settings=tenant_settings,
            blocks=blocks,
            allowlist=allowlist,
            webhooks=webhook_store,
            interval=settings.restore_check_interval,
        )
        durable = DurableRecords(journal, sealer, tenant_settings, restorer.settled)
        # restored before the bootstrap, which would otherwise see no tenant and make a key
        await restorer.start()
        if self._bootstrap:
            new_key = await bootstrap(keys, self._bootstrap_key)
            if new_key is not None and self._on_new_key is not None:
                self._on_new_key(new_key)
            registered = new_key or self._bootstrap_key
            record = await keys.lookup(registered) if registered else None
            if record is not None:
                try:
                    await durable.key_saved(record)
                except StoreUnavailable as exc:
                    # the key works from Redis; the limiter must start without its copy
                    log.error("the bootstrap key is not in the durable copy: %s", exc)
        cluster = is_cluster(redis)
        # the check script's calls on a connection of their own, pipelined (not on a
        # cluster, whose client routes each call to its shard)
        pipe = None if cluster else script_pipe(settings.redis_url, settings.redis_timeout)
        store = RedisStore(
            redis,
            keyspace,
            cluster=cluster,
            pipe=pipe,
            event_stream=keyspace.events if settings.redis_events else None,
            instance=settings.instance,
            # a streaming call the client gave up on must not run later: it would be
            # counted beside the failure policy's answer
            deadline=CallDeadline(settings.redis_timeout),
        )
        await store.load()
        # the probe has a connection and a timeout of its own: it answers for Redis, not
        # for the calls queued on the check path's connections
        prober = redis if cluster else redis_from_url(
            settings.redis_url, settings.health_probe_timeout, max_connections=2
        )  # fmt: skip
        health = StoreHealth(
            prober.ping,
            self.metrics,
            probe_timeout=settings.health_probe_timeout,
            failures_to_down=settings.failures_to_down,
        )
        auth = Authenticator(
            keys,
            tenant_settings,
            settings.fail_mode,
            settings.auth_cache_ttl,
            fallback=DurableKeys(journal, restorer),
            max_unknown=settings.auth_unknown_entries,
        )
        outage: OutageRecorder | None = None
        if settings.redis_events:
            # what the failure policy answers is not in the stream the script writes: keep
            # it on disk until Redis takes it (a spool is one process's: one per worker)
            outage = OutageRecorder(
                settings.data_dir
                / ("outage-spool" if settings.worker == 0 else f"outage-spool-{settings.worker}"),
                StreamReplay(redis, keyspace),
                health,
                self.metrics,
                settings.instance,
                max_bytes=settings.spool_max_bytes,
            )
            await outage.start()
        fallback = MemoryStore()
        blocks_copy = BlockMirror(redis, keyspace, fallback, settings.block_mirror_interval)
        store_call = health.guard(store.decide)
        primary: Primary = Coalescer(
            store_call if tracing is None else tracing.store_call(store_call),
            max_bytes=settings.call_max_bytes,
        )
        denials: DenialStream | None = None
        if settings.denial_cache_entries:
            cache = DenialCache(settings.denial_cache_entries)
            self.metrics.watch_denial_cache(cache)
            if settings.redis_events:
                # the script streams what Redis decides; what the cache decides goes here
                denials = DenialStream(
                    StreamReplay(redis, keyspace), settings.instance, fallback=outage
                )
                denials.start()
            primary = CachedSubmit(cache, primary.submit, denials)
        decider = FailoverDecider(primary, fallback, health, outage)
        # the API's own limits on the same script, through a store that streams nothing:
        # they never reach the decision stream or a sink as a customer's decisions
        internal_store = RedisStore(redis, keyspace, cluster=cluster, pipe=pipe)
        await internal_store.load()
        api_limits = ApiLimiter(
            FailoverDecider(Coalescer(health.guard(internal_store.decide)), MemoryStore(), health),
            settings.api_limits,
        )
        sink: DecisionSink
        stream: StreamSink | None = None
        if settings.kafka is not None:
            from limiter.sinks.kafka import KafkaSink  # aiokafka is loaded only to stream

            sink = stream = KafkaSink(
                settings.kafka,
                # a spool is one process's: each worker has its own
                settings.data_dir
                / ("spool" if settings.worker == 0 else f"spool-{settings.worker}"),
                self.metrics,
                settings.instance,
                spool_max_bytes=settings.spool_max_bytes,
            )
            await stream.start()  # never fails for Kafka's sake: it spools until Kafka answers
        else:
            sink = self._sink_factory()
        # every tenant's policies, held here and reread every half second
        policies = PolicyCache(redis, keyspace)
        self.policies = policies
        checks: CheckHandler = (CheckHandler if tracing is None else tracing.check_handler)(
            auth,
            decider,
            sink,
            self.metrics,
            Algorithm.SLIDING_WINDOW,
            settings.max_body_bytes,
            settings.max_batch_body_bytes,
            api_limits,
            policies,
        )
        audit = AuditTrail(AuditOutbox(redis, keyspace.audit))
        analytics = open_analytics(settings.clickhouse_url) if settings.clickhouse_url else None
        control = ControlAuth(auth, api_limits)
        incidents = IncidentStore(redis, keyspace)
        privacy = PrivacyRequests(UserDataStore(redis, keyspace, blocks), incidents, analytics)
        # webhook secrets are sealed under a key of their own, derived from the key secret
        webhooks = WebhookRoutes(
            control,
            webhook_store,
            WebhookUpdater(redis, keyspace, sealer),
            DeliveryQueue(redis, keyspace),
            audit,
            durable,
            allow_private=settings.webhooks_allow_private,
        )
        route_groups: list[RouteGroup] = [
            KeyRoutes(control, keys, audit, durable),
            BlockRoutes(control, blocks, audit, durable),
            IncidentRoutes(control, incidents),
            SettingsRoutes(control, tenant_settings, audit, durable),
            PrivacyRoutes(control, privacy, audit),
            AnalyticsRoutes(control, analytics),
            AllowlistRoutes(control, allowlist, audit, durable),
            PolicyRoutes(control, policies, audit, durable),
            webhooks,
            # the browser console: static files over the routes above, off the check path
            ConsoleRoutes(ConsoleAssets()),
        ]
        health_routes = HealthRoutes(
            redis,
            health,
            self.metrics,
            settings.fail_mode,
            settings.instance,
            VERSION,
            decision_stream=stream.status if stream is not None else None,
            outage_spool=outage.status if outage is not None else None,
            webhook_metrics=WebhookMetrics(DeliveryStats(redis, keyspace)),
            stream_backlog=(
                BacklogReport(
                    redis, keyspace.events, settings.backlog_max_bytes, settings.backlog_max_age
                )
                if settings.redis_events
                else None
            ),
            token=settings.metrics_token,
            blocks_copy=blocks_copy.status,
            policies_copy=policies.status,
        )
        openapi = build_openapi(VERSION)
        app.router.routes.extend(
            [
                *(route for group in route_groups for route in group.routes()),
                *health_routes.routes(),
                Route("/openapi.json", lambda request: json_response(openapi), methods=["GET"]),
            ]
        )
        watcher = asyncio.create_task(health.watch(), name="health watcher")
        mirror = asyncio.create_task(blocks_copy.run(), name="blocks mirror")
        flusher = asyncio.create_task(self.metrics.flush_every(), name="metrics flusher")
        restoring = asyncio.create_task(restorer.watch(), name="restore watcher")
        policy_copy = asyncio.create_task(policies.run(), name="policies copy")
        self._gate = GateHandler(
            checks,
            auth,
            decider,
            self.metrics,
            api_limits,
            TrustedProxies(settings.trusted_proxies) if settings.trusted_proxies else None,
        )
        rls: RlsServer | None = None
        if settings.grpc_port is not None:
            rls = await self._start_rls(auth, decider, sink, api_limits, policies)
        self._checks = checks
        if tracing is None:  # a traced check's spans are made around the ASGI handler
            self.check_lane = CheckLane(
                checks,
                decider,
                auth,
                self._problem_of,
                settings.max_body_bytes,
                settings.max_batch_body_bytes,
                decider.cached,
            )
        # what start-up allocated lives as long as the process: keeping it out of the
        # collector's generations makes the collections under load cheap
        gc.freeze()
        # and rare: see GC_GEN0_THRESHOLD
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            self.check_lane = None
            self._checks = None
            self._gate = None
            if rls is not None:  # its calls in flight end before the sink is closed
                await bounded_step("the gRPC server's stop", rls.stop())
            await cancel_tasks((watcher, mirror, flusher, restoring, policy_copy))
            self.metrics.flush()
            # not cut short: the sink bounds its own close and spools what it could not send
            await sink.close()
            if denials is not None:  # before the recorder, which takes what is left
                await denials.close()
            if tracing is not None:
                await tracing.shutdown()
            if outage is not None:
                await bounded_step("the outage spool's close", outage.close())
            if analytics is not None:
                await bounded_step("the analytics client's close", analytics.close())
            await bounded_step("the durable journal's close", journal.close())
            if prober is not redis:
                await bounded_step("the health probe's close", prober.aclose())
            if pipe is not None:
                await pipe.aclose()
            await bounded_step("the Redis client's close", redis.aclose())

    async def _start_rls(
        self,
        auth: Authenticator,
        decider: FailoverDecider,
        sink: DecisionSink,
        api_limits: ApiLimiter,
        policies: PolicyCache,
    ) -> RlsServer:
        """Envoy's rate limit service on ``--grpc-port``, beside the HTTP API; grpcio is
        imported here only, so a limiter without it never loads it."""
        from limiter.grpc.server import RlsServer
        from limiter.grpc.service import RateLimitService

        settings = self.settings
        assert settings.grpc_port is not None
        service = RateLimitService(
            auth, decider, sink, self.metrics, Algorithm.SLIDING_WINDOW, policies, api_limits
        )
        server = RlsServer(
            service,
            settings.host,
            settings.grpc_port,
            # several workers share the port; one process holds it alone
            share_port=settings.workers > 1,
            max_message_bytes=settings.max_body_bytes,
            tls=settings.grpc_tls,
        )
        await server.start()
        return server

    async def _on_error(self, request: Request, exc: Exception) -> Response:
        problem = problem_for(exc)
        if problem is None:
            if isinstance(exc, HTTPException):
                kind = {404: "not-found", 405: "method-not-allowed"}.get(
                    exc.status_code, "validation-error"
                )
                problem = Problem(exc.status_code, kind, str(exc.detail))
            else:
                log.error("request failed", exc_info=exc)
                problem = Problem(500, "internal-error", "the server failed; see its log")
        self.metrics.http_errors.labels(str(problem.status)).inc()
        return Response(
            problem.body(request.url.path),
            problem.status,
            headers={k.decode(): v.decode() for k, v in problem.headers()},
        )


def create_app(settings: LimiterSettings, key_secret: bytes, **options: Any) -> LimiterApp:
    return LimiterApp(settings, key_secret, **options)
