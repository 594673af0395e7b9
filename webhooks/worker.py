"""The webhook worker: announces every alert of the alert outbox to the webhooks of its
tenant that subscribed to its kind.

It reads the alert outbox (``Keyspace.alerts``) in a consumer group of its own,
``ratewatch-webhooks``, created at the outbox's first entry, through the outbox drain
(``stream/outbox_drain.py``: claims what a dead worker left, retries while Redis fails).
For each batch it queues one delivery per alert and subscribed webhook (a disabled one
subscribes to nothing) in the delivery queue (``webhooks/queue.py``), and only then
are the entries acknowledged: each delivery is then done or durably scheduled, whatever
happens to this process.  The sender (``webhooks/delivery.py``) makes the attempts.
The drain that stores alerts in ClickHouse reads the same outbox in its own group and
records the malformed entries; this one only skips them.

Delivery is at least once: a worker killed between queueing and acknowledging queues the
batch again (a delivery still queued is not queued twice, one delivered meanwhile is sent
again), so receivers drop repeats by ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import httpx
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from stream import alerts
from stream.alerts import AlertEvent
from stream.outbox_drain import OutboxDrain
from webhooks.delivery import WebhookSender, WebhookSettings, new_client
from webhooks.payloads import alert_delivery
from webhooks.queue import DeliveryQueue
from webhooks.registry import Webhook, WebhookStore
from webhooks.sealing import SecretSealer
from webhooks.stats import DeliveryStats

WEBHOOK_GROUP = "ratewatch-webhooks"


class WebhookWorker:
    """``consumer`` names this worker in the group (one name per host, so a restarted
    worker resumes its own unacknowledged entries).  ``client`` and ``rng`` (the retries'
    jitter) are for tests; by default the worker makes and closes its own client."""

    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        sealer: SecretSealer,
        settings: WebhookSettings | None = None,
        *,
        consumer: str,
        client: httpx.AsyncClient | None = None,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        rng: random.Random | None = None,
    ):
        self.settings = settings or WebhookSettings()
        self.store = WebhookStore(redis, keyspace, sealer)
        self.queue = DeliveryQueue(redis, keyspace)
        self._own_client = client is None
        self._client = client or new_client(self.settings)
        self.stats = DeliveryStats(redis, keyspace)
        self.sender = WebhookSender(
            self.store, self.queue, self.stats, self._client, self.settings, rng=rng
        )
        self.drain = OutboxDrain[AlertEvent](
            redis,
            keyspace.alerts,
            alerts.decode,
            self.enqueue,
            name="webhook",
            group=WEBHOOK_GROUP,
            consumer=consumer,
            block_ms=block_ms,
            claim_idle_ms=claim_idle_ms,
            record_malformed=False,
        )

    async def enqueue(self, events: Sequence[AlertEvent], token: str = "") -> int:
        """Queue the deliveries of ``events`` (the drain's write; ``token`` is unused, as
        queueing is idempotent by delivery id).  How many were queued."""
        hooks: dict[str, list[Webhook]] = {}
        deliveries = []
        for event in events:
            if event.tenant not in hooks:
                hooks[event.tenant] = await self.store.webhooks(event.tenant)
            deliveries += [
                alert_delivery(event.tenant, hook.id, event)
                for hook in hooks[event.tenant]
                if hook.wants(event.kind, _incident_of(event))
            ]
        await self.queue.enqueue(deliveries)
        if deliveries:
            self.sender.wake()
        return len(deliveries)

    async def run(self, stop: asyncio.Event) -> None:
        """Read alerts and deliver them until ``stop`` is set; the batch in hand and the
        attempts in flight are finished first."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.drain.run(stop), name="ratewatch-webhook-drain")
                tasks.create_task(self.sender.run(stop), name="ratewatch-webhook-sender")
        finally:
            if self._own_client:
                await self._client.aclose()


def _incident_of(event: AlertEvent) -> str | None:
    """The incident a per-block alert's block belongs to (a campaign's member), if any."""
    incident = event.explanation.get("incident_id")
    return incident if isinstance(incident, str) and incident else None
