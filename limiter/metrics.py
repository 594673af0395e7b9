"""Prometheus metrics of one limiter process, on a registry of its own."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from limiter.algorithms import Outcome

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LimiterMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ):
        self.registry = registry or CollectorRegistry()
        # what /metrics shows: this process's registry, or every worker's metric files
        self.exposition = self.registry
        if multiprocess_dir is not None:
            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.exposition, path=str(multiprocess_dir)
            )
        self.decisions = Counter(
            "ratewatch_decisions",
            "Rate-limit decisions by result and reason",
            ["result", "reason"],
            registry=self.registry,
        )
        self.check_latency = Histogram(
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
        # children bound once: a labels() lookup per decision would cost on the hot path
        self._decision_children: dict[tuple[bool, str], Counter] = {}
        self.check_seconds = self.check_latency.labels("check")
        self.batch_seconds = self.check_latency.labels("batch")

    def count_decisions(self, outcomes: Sequence[Outcome]) -> None:
        """Count a batch's decisions with one increment per distinct result."""
        tally = Tally((outcome.allowed, outcome.reason.label) for outcome in outcomes)
        for (allowed, reason), amount in tally.items():
            self.count_decision(allowed, reason, amount)

    def count_decision(self, allowed: bool, reason: str, amount: int = 1) -> None:
        child = self._decision_children.get((allowed, reason))
        if child is None:
            child = self.decisions.labels("allowed" if allowed else "denied", reason)
            self._decision_children[(allowed, reason)] = child
        child.inc(amount)
