"""Webhook delivery attempts: lease due deliveries from the queue, POST them, and record
what happened.

Each attempt POSTs the delivery's body (``webhooks/payloads.py``), signed anew with
the attempt's timestamp, to the webhook's URL, with a timeout, without following
redirects.  A 2xx answer delivers it; anything else (another status, no answer, a refused
target) is a failure, retried after the next delay of ``retry_schedule`` (by default the
Standard Webhooks schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each moved
by up to ``retry_jitter`` of itself either way (``webhooks/retry.py``), and after the
last one the delivery has failed.  Every attempt is logged on the webhook with its outcome,
the webhook's health updated (``webhooks/registry.py``) and the outcome counted for
``/metrics`` (``webhooks/stats.py``).

A delivery that falls due while its webhook is disabled is not sent: it is dropped and
logged as a ``skipped`` attempt, as Svix drops the attempts of a disabled endpoint.  During
a secret rotation's grace period each attempt is signed with both secrets.

Attempts run concurrently, at most ``max_in_flight`` in all and ``per_webhook`` per
webhook, so an endpoint that times out holds up no other.  Unless ``allow_private``, the
webhook's host is resolved before each attempt, every address must be public
(``webhooks/targets.py``) and the request goes to the address checked, with the
name kept in the ``Host`` header and TLS's SNI and certificate check: a name cannot
resolve to a public address for the check and a private one for the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from limiter.errors import InvalidInput, LimiterError
from webhooks.payloads import body_for, signature_headers
from webhooks.queue import Delivery, DeliveryQueue, QueueUnavailable
from webhooks.registry import (
    DELIVERED,
    FAILED,
    RETRYING,
    SKIPPED,
    Attempt,
    Webhook,
    WebhookStore,
)
from webhooks.retry import DEFAULT_JITTER, RetryPolicy
from webhooks.stats import DeliveryStats
from webhooks.targets import parse_target, resolve_public

log = logging.getLogger("ratewatch.webhooks")

# seconds before each attempt, counted from the one before (Standard Webhooks / Svix)
RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
RESPONSE_EXCERPT = 200  # characters of a response body kept with an attempt
USER_AGENT = "RateWatch-Webhooks/1"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    allow_private: bool = False
    request_timeout: float = 10.0
    retry_schedule: tuple[float, ...] = RETRY_SCHEDULE
    retry_jitter: float = DEFAULT_JITTER
    max_in_flight: int = 32
    per_webhook: int = 4
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.request_timeout <= 120:
            raise ValueError(f"webhook request timeout {self.request_timeout!r}s is not 0-120")
        RetryPolicy(self.retry_schedule, self.retry_jitter)  # ValueError naming a bad one
        if not 1 <= self.per_webhook <= self.max_in_flight <= 1000:
            raise ValueError(
                f"webhook concurrency {self.per_webhook!r} per webhook, "
                f"{self.max_in_flight!r} in all is not 1 <= per webhook <= in all <= 1000"
            )
        if not 0 < self.poll_interval <= 60:
            raise ValueError(f"webhook poll interval {self.poll_interval!r}s is not 0-60")


def new_client(settings: WebhookSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=settings.request_timeout,
        follow_redirects=False,
        # no proxy from the environment: it would resolve the name itself, unchecked
        trust_env=False,
        # no connection reuse: a connection is to the address checked for one attempt
        limits=httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=0),
        # uncompressed answers: only their start is read, never inflated
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
    )


class WebhookSender:
    """``rng`` draws the retries' jitter (seeded in tests)."""

    def __init__(
        self,
        store: WebhookStore,
        queue: DeliveryQueue,
        stats: DeliveryStats,
        client: httpx.AsyncClient,
        settings: WebhookSettings,
        *,
        rng: random.Random | None = None,
    ):
        self._store = store
        self._queue = queue
        self._stats = stats
        self._client = client
        self.settings = settings
        self._retries = RetryPolicy(settings.retry_schedule, settings.retry_jitter, rng)
        self._wake = asyncio.Event()
        self._busy: Counter[str] = Counter()
        self._in_flight: set[asyncio.Task[None]] = set()
        self.attempts = 0

    def wake(self) -> None:
        """Look for due deliveries now (new ones were queued)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Attempt due deliveries until ``stop`` is set, then finish the attempts in flight
        (those cut short are attempted again once their lease ends)."""
        pause = 0.25
        try:
            while not stop.is_set():
                room = self.settings.max_in_flight - len(self._in_flight)
                self._wake.clear()
                if room > 0:
                    try:
                        leased, deferred = await self._queue.lease(
                            room, self._busy, self.settings.per_webhook
                        )
                    except QueueUnavailable as exc:
                        log.error("webhook queue failed (%s); retrying in %.1fs", exc, pause)
                        await _wait_any([stop.wait()], pause)
                        pause = min(5.0, pause * 2)
                        continue
                    pause = 0.25
                    for delivery in leased:
                        self._start(delivery)
                    if len(leased) == room or deferred:
                        # more may be due (behind the deliveries pushed back, which are
                        # not due any more); room is made as attempts finish
                        continue
                await _wait_any(
                    [stop.wait(), self._wake.wait(), *self._in_flight], self.settings.poll_interval
                )
        finally:
            if self._in_flight:
                await _wait_any(list(self._in_flight), self.settings.request_timeout + 5)
                for task in self._in_flight:
                    task.cancel()
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _start(self, delivery: Delivery) -> None:
        self._busy[delivery.webhook_id] += 1
        task = asyncio.create_task(self._attempt_safely(delivery))
        self._in_flight.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self._in_flight.discard(task)
            self._busy[delivery.webhook_id] -= 1
            if self._busy[delivery.webhook_id] <= 0:
                del self._busy[delivery.webhook_id]
            self._wake.set()

        task.add_done_callback(done)

    async def _attempt_safely(self, delivery: Delivery) -> None:
        try:
            await self.attempt(delivery)
        except (LimiterError, QueueUnavailable) as exc:
            # the delivery stays leased: it is attempted again when the lease ends
            log.error("webhook delivery %s: recording its attempt failed: %s", delivery.id, exc)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)

    async def attempt(self, delivery: Delivery) -> Attempt | None:
        """One attempt of ``delivery``: sent, recorded, completed or rescheduled.  None if
        the webhook is gone (the delivery is dropped)."""
        hook = await self._store.find(delivery.tenant, delivery.webhook_id)
        if hook is None:
            await self._queue.complete(delivery)
            return None
        number = delivery.attempts + 1
        if not hook.enabled:
            await self._queue.complete(delivery)
            skipped = _attempt(
                delivery, number, time.time(), SKIPPED, error="webhook disabled: not sent"
            )
            return await self._record(hook, skipped)
        self.attempts += 1
        status, error, excerpt = await self._send(hook, delivery)
        now = time.time()
        next_at: float | None = None
        if status is not None and 200 <= status < 300:
            outcome = DELIVERED
            await self._queue.complete(delivery)
        elif (delay := self._retries.delay_after(number)) is not None:
            outcome, next_at = RETRYING, now + delay
            if not await self._queue.retry(delivery, next_at):
                outcome, next_at = FAILED, None  # dropped meanwhile
        else:
            outcome = FAILED
            await self._queue.complete(delivery)
        result = _attempt(
            delivery,
            number,
            now,
            outcome,
            status=status,
            error=error,
            response=excerpt,
            next_at=next_at,
        )
        return await self._record(hook, result)

    async def _record(self, hook: Webhook, result: Attempt) -> Attempt:
        """Log the attempt on the webhook, count it for /metrics, and in the log."""
        await self._store.record_attempt(hook.tenant, hook.id, result)
        await self._stats.count(result.outcome)
        level = logging.INFO if result.outcome in (DELIVERED, SKIPPED) else logging.WARNING
        log.log(
            level,
            "webhook %s (%s) delivery %s attempt %d: %s (%s)",
            hook.id,
            _host(hook.url),
            result.delivery_id,
            result.attempt,
            result.outcome,
            result.status if result.status is not None else result.error,
        )
        return result

    async def _send(self, hook: Webhook, delivery: Delivery) -> tuple[int | None, str | None, str]:
        """POST the delivery once: (status, None, excerpt) or (None, error, "")."""
        body = body_for(hook.url, delivery)
        now = time.time()
        headers = {
            "content-type": "application/json",
            **signature_headers(hook.signing_secrets(now), delivery.id, int(now), body),
        }
        timeout = self.settings.request_timeout
        try:
            async with asyncio.timeout(timeout):
                url, extensions = await self._target(hook.url, headers)
                async with self._client.stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                ) as response:
                    return response.status_code, None, await _excerpt(response)
        except TimeoutError:
            return None, f"no answer within {timeout:g}s", ""
        except InvalidInput as exc:  # a refused or unresolvable target
            return None, str(exc)[:300], ""
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, text[:300], ""
        except Exception as exc:
            # a failed attempt all the same, so that no delivery is retried without end
            log.exception("webhook %s: the attempt failed unexpectedly", hook.id)
            return None, f"failed unexpectedly: {type(exc).__name__}", ""

    async def _target(
        self, url: str, headers: dict[str, str]
    ) -> tuple[httpx.URL, dict[str, object]]:
        """Where to send: the URL itself, or (unless private targets are allowed) the URL
        with its host replaced by the checked address it resolves to."""
        # the URL's syntax only: what counts now is where its host resolves to
        target = parse_target(url, allow_private=True)
        parsed = httpx.URL(target.url)
        if self.settings.allow_private:
            return parsed, {}
        addresses = await resolve_public(target.host, target.port)
        headers["host"] = parsed.netloc.decode("ascii")
        extensions: dict[str, object] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        return parsed.copy_with(host=addresses[0]), extensions


def _attempt(
    delivery: Delivery,
    number: int,
    at: float,
    outcome: str,
    *,
    status: int | None = None,
    error: str | None = None,
    response: str = "",
    next_at: float | None = None,
) -> Attempt:
    return Attempt(
        delivery_id=delivery.id,
        event_id=delivery.event_id,
        type=delivery.type,
        attempt=number,
        at=round(at, 3),
        outcome=outcome,
        status=status,
        error=error,
        response=response,
        next_retry_at=round(next_at, 3) if next_at is not None else None,
    )


async def _excerpt(response: httpx.Response) -> str:
    """The start of the response body; the rest is not read."""
    taken = b""
    async for chunk in response.aiter_raw():
        taken += chunk
        if len(taken) >= RESPONSE_EXCERPT * 4:
            break
    return taken.decode("utf-8", "replace")[:RESPONSE_EXCERPT]


def _host(url: str) -> str:
    # logs name the host only: a Slack URL's path is its secret
    return httpx.URL(url).host


async def _wait_any(
    waits: Sequence[Coroutine[Any, Any, Any] | asyncio.Task[Any]], seconds: float
) -> None:
    """Wait until one of ``waits`` (coroutines or tasks) is done, at most ``seconds``."""
    own = [asyncio.ensure_future(w) for w in waits if not isinstance(w, asyncio.Task)]
    tasks = own + [w for w in waits if isinstance(w, asyncio.Task)]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in own:
            task.cancel()
        for task in own:
            with contextlib.suppress(asyncio.CancelledError):
                await task
