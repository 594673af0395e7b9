"""The webhook worker (``webhooks/worker.py``) as a task of ``ratewatch pipeline``
(embedded) and of ``ratewatch stream --redis-url`` (distributed): it stops with them, on
SIGTERM, after the batch and the attempts in hand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from webhooks.worker import WebhookWorker

log = logging.getLogger("ratewatch.webhooks")

STOP_TIMEOUT = 30.0


class WebhookTask:
    def __init__(self, worker: WebhookWorker, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.worker = worker
        self.stop_timeout = stop_timeout
        self._task: asyncio.Task[None] | None = None

    def start(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set.  A worker that ends by itself has failed: it sets
        ``stop`` too, so the process ends and its supervisor starts a fresh one."""
        self._task = asyncio.create_task(self.worker.run(stop), name="ratewatch-webhooks")
        self._task.add_done_callback(lambda _: stop.set())

    async def stop(self) -> None:
        """Once ``stop`` is set: wait for the worker to finish what it has in hand (cancel
        it past ``stop_timeout``; what it leaves is delivered by the next worker)."""
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=self.stop_timeout)
        if not done:
            log.warning(
                "the webhook worker did not stop within %.0fs: cancelling it", self.stop_timeout
            )
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                log.exception("the webhook worker failed")


def open_webhook_task(
    redis: Redis,
    key_prefix: str,
    key_secret: bytes,
    *,
    consumer: str,
    allow_private: bool = False,
) -> WebhookTask:
    """The webhook worker of the alert outbox of ``redis``; ``consumer`` names it in its
    group (one name per host); the secrets are opened with a key derived from
    ``key_secret``, the server's."""
    from limiter.keyspace import Keyspace
    from webhooks.delivery import WebhookSettings
    from webhooks.sealing import SecretSealer
    from webhooks.worker import WebhookWorker

    settings = WebhookSettings(allow_private=allow_private)
    worker = WebhookWorker(
        redis, Keyspace(key_prefix), SecretSealer(key_secret), settings, consumer=consumer
    )
    return WebhookTask(worker)
