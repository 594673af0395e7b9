"""The webhook delivery worker, run as a task in the test's event loop against a real Redis:
tests record alerts in the outbox (``tests.support.outboxes.record_alerts``) and watch what
a ``tests.support.webhook_receiver.Receiver`` gets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from tests.support.credentials import SEALER
from webhooks.delivery import WebhookSettings
from webhooks.worker import WebhookWorker


@dataclass
class Running:
    worker: WebhookWorker
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self) -> None:
        """Stop the worker as its process would on SIGTERM, and wait until it has."""
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


def start_worker(redis: Redis, keyspace: Keyspace, name: str = "w1", **settings: Any) -> Running:
    """A worker named ``name`` polling every 0.1 s, private targets allowed (the receiver is
    on 127.0.0.1), ``settings`` overriding the rest."""
    options: dict[str, Any] = {"allow_private": True, "poll_interval": 0.1, **settings}
    worker = WebhookWorker(
        redis, keyspace, SEALER, WebhookSettings(**options), consumer=name, block_ms=100
    )
    stop = asyncio.Event()
    return Running(worker, stop, asyncio.create_task(worker.run(stop)))
