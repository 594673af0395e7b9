"""The webhook delivery metrics of ``/metrics``: read from Redis when scraped.

``ratewatch_webhook_deliveries_total{outcome}`` (counter: attempts by outcome, ``delivered``,
``retrying``, ``failed``, ``skipped``) and ``ratewatch_webhook_queue_depth`` (gauge:
deliveries queued) are the deployment's totals, kept in Redis by the delivery workers
(``webhooks/stats.py``).  So they are generated at each scrape on a registry of their
own, never on the process's: with ``--workers N`` the process metrics are summed over every
worker's files (prometheus_client's multiprocess mode), which would multiply these by N.

When Redis does not answer within ``timeout`` the two metrics are left out of the scrape
(``ratewatch_redis_up`` says why); ``/metrics`` itself still answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from webhooks.queue import QueueUnavailable
from webhooks.stats import DeliveryCounts, DeliveryStats

log = logging.getLogger("ratewatch.limiter")

READ_TIMEOUT = 1.0


class WebhookMetrics:
    def __init__(self, stats: DeliveryStats, timeout: float = READ_TIMEOUT):
        self._stats = stats
        self._timeout = timeout

    async def exposition(self) -> bytes:
        """The metrics in Prometheus text format, or nothing if Redis did not answer."""
        try:
            async with asyncio.timeout(self._timeout):
                counts = await self._stats.read()
        except (QueueUnavailable, TimeoutError) as exc:
            log.warning("webhook delivery metrics left out of /metrics: %s", exc or "timed out")
            return b""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(counts))
        return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, counts: DeliveryCounts):
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        deliveries = CounterMetricFamily(
            "ratewatch_webhook_deliveries",
            "Webhook delivery attempts by outcome, across every delivery worker",
            labels=["outcome"],
        )
        for outcome, count in self._counts.outcomes.items():
            deliveries.add_metric([outcome], count)
        yield deliveries
        yield GaugeMetricFamily(
            "ratewatch_webhook_queue_depth",
            "Webhook deliveries queued: due, waiting for a retry, or being attempted",
            value=self._counts.queue_depth,
        )
