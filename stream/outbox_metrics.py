"""Prometheus metrics of the outbox drains (``stream.outbox_drain``), one series per outbox
(``audit``, ``alert``, ``incident``), on the registry they are given."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True)
class OutboxCounters:
    """One outbox's series, bound once: a labels() lookup per batch is not needed."""

    stored: Counter
    published: Counter
    dead_lettered: Counter
    claimed: Counter
    failures: Counter


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.stored = Counter(
            "ratewatch_outbox_entries_stored",
            "Outbox entries written to their ClickHouse table, by outbox",
            ["outbox"],
            registry=self.registry,
        )
        self.published = Counter(
            "ratewatch_outbox_entries_published",
            "Outbox entries the Kafka broker acknowledged on their topic, by outbox",
            ["outbox"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "ratewatch_outbox_dead_letters",
            "Outbox entries that are not their outbox's event, moved to its dead-letter stream",
            ["outbox"],
            registry=self.registry,
        )
        self.claimed = Counter(
            "ratewatch_outbox_entries_claimed",
            "Outbox entries taken over from a consumer that left them pending (a drain died)",
            ["outbox"],
            registry=self.registry,
        )
        self.failures = Counter(
            "ratewatch_outbox_failures",
            "Failed store, publish or Redis calls of a drain; each is retried",
            ["outbox"],
            registry=self.registry,
        )

    def bind(self, outbox: str) -> OutboxCounters:
        """The series of ``outbox``, shown (at 0) from now on."""
        return OutboxCounters(
            self.stored.labels(outbox),
            self.published.labels(outbox),
            self.dead_lettered.labels(outbox),
            self.claimed.labels(outbox),
            self.failures.labels(outbox),
        )
