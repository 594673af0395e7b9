"""Decisions for detection from the Kafka decision topic (``ratewatch detect`` of the
distributed deployment): a FastStream batch subscriber in its own consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from detectors.runner import DetectionLoop
from stream.events import DECISIONS_TOPIC, MalformedEvent, decode

log = logging.getLogger("ratewatch.detect")


async def detect_on_kafka(
    loop: DetectionLoop, bootstrap: str, group: str, stop: asyncio.Event
) -> None:
    """Feed ``loop`` the decisions of the topic from now on, and evaluate, until ``stop``."""
    broker = KafkaBroker(
        bootstrap, apply_types=False, logger=logging.getLogger("ratewatch.detect.faststream")
    )

    async def on_batch(messages: Any) -> None:
        events = []
        for message in messages:
            with contextlib.suppress(MalformedEvent):
                events.append(decode(message))
        loop.observe(events)

    # detection needs the traffic from now on, not the topic's history; a lost batch only
    # shifts a rate, so offsets are committed as the batches arrive
    subscriber = broker.subscriber(
        DECISIONS_TOPIC,
        batch=True,
        group_id=group,
        max_records=5000,
        auto_offset_reset="latest",
        ack_policy=AckPolicy.ACK_FIRST,
        decoder=_raw_values,
    )
    subscriber(on_batch)
    evaluator = asyncio.create_task(loop.run(stop), name="ratewatch-detect")
    await broker.start()
    log.info("detecting abuse in %s at %s as group %s", DECISIONS_TOPIC, bootstrap, group)
    try:
        await stop.wait()
    finally:
        await broker.stop()
        evaluator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await evaluator
        await loop.close()


async def _raw_values(message: Any) -> Any:
    # a batch message's raw records: their values are the encoded events
    return [record.value for record in message.raw_message]
