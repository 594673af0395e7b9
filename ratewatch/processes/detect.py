"""``ratewatch detect``'s process: detection on the Kafka decision topic, acting on the
limiter's Redis, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from prometheus_client import CollectorRegistry

from detectors.fit_process import ProcessFitter
from detectors.kafka_source import detect_on_kafka
from detectors.metrics import DetectionMetrics
from detectors.service import build_detection
from limiter.keyspace import Keyspace
from limiter.redis_client import connect
from ratewatch.processes.fit_command import FIT_COMMAND

log = logging.getLogger("ratewatch.detect")


async def run_detect(
    data_dir: Path,
    kafka: str,
    redis_url: str,
    key_prefix: str,
    group: str,
    interval: float,
    registry: CollectorRegistry | None,
) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    redis = await connect(redis_url, socket_timeout=5.0)
    metrics = DetectionMetrics(registry)
    fitter = ProcessFitter(command=FIT_COMMAND)
    keyspace = Keyspace(key_prefix)
    loop = build_detection(redis, keyspace, data_dir / "models", interval, metrics, fitter)
    try:
        await loop.resume()
        await detect_on_kafka(loop, kafka, group, stop)
    finally:
        await redis.aclose()
        log.info("detection stopped: %s", loop.stats)
