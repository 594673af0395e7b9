"""Prometheus metrics of a decision consumer (``ratewatch stream`` on Kafka, the pipeline
worker on the Valkey stream), on the registry it is given.

Kafka consumer lag is the partition's high watermark as the consumer's last fetch saw it,
less the offset committed after the batch: not ``end_offsets`` (ListOffsets), which some
brokers answer with the last record batch's base offset + 1 (tansu does).  A consumer stuck
on a failing store fetches nothing new, so its lag stops growing while it is stuck; the age
of the newest stored event (``ratewatch_stream_last_event_age_seconds``, computed at each
scrape) is what a staleness alert should watch.  That age grows as well while no traffic
arrives, so the alert belongs beside the limiters' decision rate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# from a light batch on an idle consumer to a 50,000-record insert on a busy one
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ConsumerMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.stored = Counter(
            "ratewatch_stream_events_stored",
            "Decision events written to the analytics store",
            registry=self.registry,
        )
        self.skipped = Counter(
            "ratewatch_stream_events_skipped",
            "Decision events delivered again that the store already held (replays), not written",
            registry=self.registry,
        )
        self.batches = Counter(
            "ratewatch_stream_batches",
            "Batches written to the analytics store (one partition's records each)",
            registry=self.registry,
        )
        self.write_failures = Counter(
            "ratewatch_stream_write_failures",
            "Calls to the analytics store that failed; each is retried with the same batch",
            registry=self.registry,
        )
        self.write_seconds = Histogram(
            "ratewatch_stream_write_duration_seconds",
            "Time to handle one batch: decode, look up the ledger, insert",
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.last_event = Gauge(
            "ratewatch_stream_last_event_timestamp_seconds",
            "Decision time of the newest event stored, Unix seconds",
            registry=self.registry,
        )
        self.committed = Gauge(
            "ratewatch_stream_committed_offset",
            "Next offset of each assigned Kafka partition, as last committed",
            ["partition"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "ratewatch_stream_lag_records",
            "Records of each assigned Kafka partition after the last commit, against the high "
            "watermark of the consumer's latest fetch",
            ["partition"],
            registry=self.registry,
        )
        self.commit_failures = Counter(
            "ratewatch_stream_commit_failures",
            "Kafka offset commits that failed (the partition moved to another member)",
            registry=self.registry,
        )
        self.held = Counter(
            "ratewatch_stream_held_seconds",
            "Seconds the embedded consumer held its reads and inserts while the limiter was "
            "busy (ratewatch up: the checks first)",
            registry=self.registry,
        )
        self._newest_ms: int | None = None
        self.registry.register(_EventAge(self, clock))

    @property
    def newest_event_ms(self) -> int | None:
        return self._newest_ms

    def batch_written(
        self, written: int, skipped: int, seconds: float, newest_ms: int | None
    ) -> None:
        """A batch is in the store: ``written`` events inserted, ``skipped`` held before,
        in ``seconds``; ``newest_ms`` is its latest decision time (epoch ms), None for a
        batch of malformed records only."""
        self.stored.inc(written)
        self.skipped.inc(skipped)
        self.batches.inc()
        self.write_seconds.observe(seconds)
        if newest_ms is None:
            return
        if self._newest_ms is None or newest_ms > self._newest_ms:
            self._newest_ms = newest_ms
            self.last_event.set(newest_ms / 1000)

    def partition_committed(self, partition: int, offset: int, highwater: int | None) -> None:
        """``offset`` (the next to read) was committed; ``highwater`` is the partition's end
        as last fetched, None before the first fetch answered."""
        label = str(partition)
        self.committed.labels(label).set(offset)
        if highwater is not None:
            self.lag.labels(label).set(max(0, highwater - offset))

    def partitions_revoked(self, partitions: Iterable[int]) -> None:
        """Stop reporting partitions another member now consumes: it reports them."""
        for partition in partitions:
            for gauge in (self.committed, self.lag):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(partition))


class _EventAge(Collector):
    """The age of the newest stored event, at scrape time; absent until one is stored."""

    def __init__(self, metrics: ConsumerMetrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        newest = self._metrics.newest_event_ms
        if newest is None:
            return
        yield GaugeMetricFamily(
            "ratewatch_stream_last_event_age_seconds",
            "Seconds since the decision time of the newest event stored (grows while the "
            "consumer is stuck, and while no traffic arrives)",
            value=max(0.0, self._clock() - newest / 1000),
        )
