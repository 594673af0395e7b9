"""Dead letters of the embedded pipeline: records that are not decision events go to a
Redis stream beside the event stream, with the reason, so nothing is silently dropped."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError

from stream.dead_letters import DeadLetterMetrics
from stream.handlers import Record

log = logging.getLogger("ratewatch.stream")


class RedisDeadLetters:
    def __init__(
        self,
        redis_url: str,
        stream: str,
        max_length: int = 100_000,
        metrics: DeadLetterMetrics | None = None,
    ):
        # synchronous: the batch handler runs on the chDB worker thread, not the event loop
        self._redis = Redis.from_url(redis_url, socket_timeout=5.0)
        self._stream = stream
        self._max_length = max_length
        self.metrics = metrics or DeadLetterMetrics()
        self.failed = 0

    def send(self, source: str, partition: int, record: Record, error: str) -> None:
        try:
            self._redis.xadd(
                self._stream,
                {"source": source, "offset": record.offset, "error": error, "value": record.value},
                maxlen=self._max_length,
                approximate=True,
            )
        except RedisError as exc:
            self.failed += 1
            self.metrics.failed.inc()
            log.error("could not keep a dead letter of %s@%d: %s", source, record.offset, exc)
        else:
            self.metrics.sent.inc()
