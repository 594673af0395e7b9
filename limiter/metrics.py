"""Prometheus metrics of one limiter process, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LimiterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
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
        )
        self.http_errors = Counter(
            "ratewatch_http_problems",
            "Problem responses by status",
            ["status"],
            registry=self.registry,
        )
        # children bound once: a labels() lookup per decision would cost on the hot path
        self._decision_children: dict[tuple[bool, str], Counter] = {}
        self.check_seconds = self.check_latency.labels("check")
        self.batch_seconds = self.check_latency.labels("batch")

    def count_decision(self, allowed: bool, reason: str, amount: int = 1) -> None:
        child = self._decision_children.get((allowed, reason))
        if child is None:
            child = self.decisions.labels("allowed" if allowed else "denied", reason)
            self._decision_children[(allowed, reason)] = child
        child.inc(amount)
