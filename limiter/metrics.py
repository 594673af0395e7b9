"""Prometheus metrics of one limiter process, on a registry of its own.

The check path does not touch a Prometheus metric per request: each observation of
prometheus_client takes a lock and walks the buckets in Python, which cost as much as the
rest of the handler's bookkeeping.  A check adds to plain integers instead (a list of
decision counts, ``Latencies``), which ``flush`` moves into the metrics before this
process answers ``/metrics`` and every second.  With several workers (multiprocess mode)
any worker may answer ``/metrics`` from every worker's files, so there the check path
flushes after each request (``shared``), as it counted before.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    multiprocess,
)

from limiter.algorithms import Outcome, Reason
from limiter.denial_cache import DenialCache

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# the bucket an observation falls in is the first bound >= it, as Prometheus' `le` says
_BOUNDS = (*LATENCY_BUCKETS, math.inf)
FLUSH_INTERVAL = 1.0  # seconds between moves of the tallies into the Prometheus metrics


class _Histogram(Histogram):
    """A Histogram that also takes many observations at once, already bucketed."""

    def add(self, counts: Sequence[int], total: float) -> None:
        """Add ``counts[i]`` observations to bucket ``i`` (as ``_BOUNDS``), summing ``total``."""
        self._sum.inc(total)
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class Latencies:
    """Observations of one endpoint's latency not yet in the histogram."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        self.total += seconds

    def take(self) -> tuple[list[int], float] | None:
        """The observations so far, and none left here; None if there were none."""
        if not any(self.counts):
            return None
        taken = self.counts, self.total
        self.counts, self.total = [0] * len(_BOUNDS), 0.0
        return taken


class LimiterMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ):
        self.registry = registry or CollectorRegistry()
        # what /metrics shows: this process's registry, or every worker's metric files
        self.exposition = self.registry
        # another worker's /metrics may read this one's counts at any moment
        self.shared = multiprocess_dir is not None
        if multiprocess_dir is not None:
            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.exposition, path=str(multiprocess_dir)
            )
        else:
            # python_gc_*: the garbage collector's runs and what they freed, per generation
            # (one process's, so not where several workers share the exposition)
            GCCollector(registry=self.registry)
        self.decisions = Counter(
            "ratewatch_decisions",
            "Rate-limit decisions by result and reason",
            ["result", "reason"],
            registry=self.registry,
        )
        # shadow mode (``docs/policies.md``): checks answered allowed that the policy
        # denied; ratewatch_decisions counts them as answered (allowed)
        self.shadow_denials = Counter(
            "ratewatch_policy_shadow_denials",
            "Checks by a policy in shadow mode that it would have denied, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.check_latency = _Histogram(
            "ratewatch_check_duration_seconds",
            "Time to answer a check request, from body read to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "ratewatch_redis_errors",
            "Redis calls that failed or timed out",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "ratewatch_redis_up",
            "1 while Redis answers, 0 while the failure policy decides",
            registry=self.registry,
            multiprocess_mode="min",
        )
        self.http_errors = Counter(
            "ratewatch_http_problems",
            "Problem responses by status",
            ["status"],
            registry=self.registry,
        )
        # the decision stream (limiter.sinks): all zero without --kafka
        self.stream_sent = Counter(
            "ratewatch_stream_events_sent",
            "Decision events the broker acknowledged (directly or replayed from the spool)",
            registry=self.registry,
        )
        self.stream_spooled = Counter(
            "ratewatch_stream_events_spooled",
            "Decision events written to the disk spool (broker unreachable or too slow)",
            registry=self.registry,
        )
        self.stream_replayed = Counter(
            "ratewatch_stream_events_replayed",
            "Spooled decision events the broker acknowledged on replay",
            registry=self.registry,
        )
        self.stream_dropped = Counter(
            "ratewatch_stream_events_dropped",
            "Decision events lost: the spool was full or the disk failed",
            registry=self.registry,
        )
        self.stream_queue_depth = Gauge(
            "ratewatch_stream_queue_depth",
            "Decision events waiting in memory for the broker",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_spool_bytes = Gauge(
            "ratewatch_stream_spool_bytes",
            "Bytes in the disk spool",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_spool_events = Gauge(
            "ratewatch_stream_spool_events",
            "Decision events in the disk spool, not yet acknowledged by the broker",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_up = Gauge(
            "ratewatch_stream_up",
            "1 while decision events go straight to the broker, 0 while they are spooled",
            registry=self.registry,
            multiprocess_mode="min",
        )
        # the outage spool of the embedded stream (limiter.outage): all zero elsewhere
        self.outage_spooled = Counter(
            "ratewatch_outage_decisions_spooled",
            "Decisions answered by the failure policy and kept in the outage spool",
            registry=self.registry,
        )
        self.outage_replayed = Counter(
            "ratewatch_outage_decisions_replayed",
            "Spooled decisions appended to the decision stream once Redis answered",
            registry=self.registry,
        )
        self.outage_dropped = Counter(
            "ratewatch_outage_decisions_dropped",
            "Decisions answered by the failure policy and lost: the spool was full or the "
            "disk failed",
            registry=self.registry,
        )
        self.outage_spool_entries = Gauge(
            "ratewatch_outage_spool_entries",
            "Entries (one per failed-over call) in the outage spool, not yet in the stream",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.outage_spool_bytes = Gauge(
            "ratewatch_outage_spool_bytes",
            "Bytes in the outage spool",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # the local denial cache (limiter.denial_cache): all zero while it is off
        self.denial_cache_hits = Counter(
            "ratewatch_denial_cache_hits",
            "Checks denied by the local denial cache, without a Redis call",
            registry=self.registry,
        )
        self.denial_cache_misses = Counter(
            "ratewatch_denial_cache_misses",
            "Checks the local denial cache did not answer (sent to Redis)",
            registry=self.registry,
        )
        self.denial_cache_stores = Counter(
            "ratewatch_denial_cache_stores",
            "Denials by Redis the local denial cache learned",
            registry=self.registry,
        )
        self.denial_cache_evictions = Counter(
            "ratewatch_denial_cache_evictions",
            "Denials the local denial cache dropped for room before they expired",
            registry=self.registry,
        )
        self.denial_cache_entries = Gauge(
            "ratewatch_denial_cache_entries",
            "Denials the local denial cache holds (some may have expired)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._denial_cache: DenialCache | None = None
        self._denial_counts = (0, 0, 0, 0)  # hits, misses, stores, evictions flushed so far
        # children bound once, at their first decision, by the tally's index (below)
        self._decision_children: list[Counter | None] = [None] * (2 * len(Reason))
        self._check_seconds = self.check_latency.labels("check")
        self._batch_seconds = self.check_latency.labels("batch")
        self._gate_seconds = self.check_latency.labels("gate")
        self._rls_seconds = self.check_latency.labels("rls")  # gRPC ShouldRateLimit
        # what the check path counted since the last flush: decisions by reason * 2 + allowed
        self._decisions = [0] * len(self._decision_children)
        self.check_seconds = Latencies()
        self.batch_seconds = Latencies()
        self.gate_seconds = Latencies()
        self.rls_seconds = Latencies()

    def count_decision(self, allowed: bool, reason: Reason) -> None:
        """Count one decision (until the next flush, in a plain integer)."""
        self._decisions[reason * 2 + allowed] += 1

    def count_shadow_denial(self, reason: Reason) -> None:
        """A policy in shadow mode would have denied a check (rare: counted at once)."""
        self.shadow_denials.labels(reason.label).inc()

    def count_decisions(self, outcomes: Sequence[Outcome]) -> None:
        """Count a batch's decisions."""
        decisions = self._decisions
        for allowed, _, _, _, reason in outcomes:
            decisions[reason * 2 + allowed] += 1

    def watch_denial_cache(self, cache: DenialCache) -> None:
        """Report ``cache``'s counts (kept as plain integers) at each flush."""
        self._denial_cache = cache

    def _flush_denial_cache(self, cache: DenialCache) -> None:
        counts = (cache.hits, cache.misses, cache.stores, cache.evictions)
        metrics = (
            self.denial_cache_hits,
            self.denial_cache_misses,
            self.denial_cache_stores,
            self.denial_cache_evictions,
        )
        for metric, now, before in zip(metrics, counts, self._denial_counts, strict=True):
            if now > before:
                metric.inc(now - before)
        self._denial_counts = counts
        self.denial_cache_entries.set(len(cache))

    def flush(self) -> None:
        """Move what the check path counted into the Prometheus metrics."""
        if self._denial_cache is not None:
            self._flush_denial_cache(self._denial_cache)
        decisions, self._decisions = self._decisions, [0] * len(self._decisions)
        for index, amount in enumerate(decisions):
            if amount:
                child = self._decision_children[index]
                if child is None:
                    reason, allowed = Reason(index // 2), index % 2 == 1
                    child = self.decisions.labels("allowed" if allowed else "denied", reason.label)
                    self._decision_children[index] = child
                child.inc(amount)
        for histogram, latencies in (
            (self._check_seconds, self.check_seconds),
            (self._batch_seconds, self.batch_seconds),
            (self._gate_seconds, self.gate_seconds),
            (self._rls_seconds, self.rls_seconds),
        ):
            taken = latencies.take()
            if taken is not None:
                histogram.add(*taken)

    async def flush_every(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every ``interval`` seconds; runs for the life of the process."""
        while True:
            await asyncio.sleep(interval)
            self.flush()
