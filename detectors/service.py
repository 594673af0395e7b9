"""Abuse detection as a running service: one ``DetectionLoop`` wired on the limiter's Redis
(the per-source and campaign detectors over the decisions; the actions writing blocks,
audit entries, incidents, their history and alerts),
fed from the Valkey event stream in ``ratewatch up``'s pipeline worker.  The Kafka source of
the distributed deployment is ``detectors/kafka_source.py``.  The loop owns its models,
kept in ``model_dir``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from redis.asyncio import Redis

from detectors.actions import BlockActions
from detectors.campaign_tuning import CampaignTuningReader
from detectors.coordinated import CoordinatedDetector
from detectors.detector import AbuseDetector
from detectors.fitting import Fitter
from detectors.incident_store import IncidentStore
from detectors.incidents import IncidentActions
from detectors.metrics import DetectionMetrics
from detectors.offenders import OffenderHistory
from detectors.redis_source import RedisDecisionSource
from detectors.registry import ModelRegistry
from detectors.runner import EVALUATION_INTERVAL, DetectionLoop
from limiter.keyspace import Keyspace
from limiter.state.allowlist import Allowlist
from limiter.state.blocks import BlockStore
from limiter.state.tenants import TenantSettingsStore
from stream.alerts import AlertOutbox
from stream.audit_outbox import AuditOutbox
from stream.incidents import IncidentOutbox

log = logging.getLogger("ratewatch.detect")


def build_detection(
    redis: Redis,
    keyspace: Keyspace,
    model_dir: Path | None,
    interval: float,
    metrics: DetectionMetrics | None = None,
    fitter: Fitter | None = None,
) -> DetectionLoop:
    """``fitter``: what fits the isolation forests (default: a ``ProcessFitter``)."""
    registry = ModelRegistry(fitter, directory=model_dir, metrics=metrics)
    detector = CoordinatedDetector(AbuseDetector(registry=registry))
    alerts = AlertOutbox(redis, keyspace.alerts)
    settings = TenantSettingsStore(redis, keyspace)
    blocks = BlockActions(
        BlockStore(redis, keyspace),
        Allowlist(redis, keyspace),
        settings,
        OffenderHistory(redis, keyspace),
        AuditOutbox(redis, keyspace.audit),
        alerts,
    )
    actions = IncidentActions(
        blocks,
        detector,
        IncidentStore(redis, keyspace),
        alerts,
        IncidentOutbox(redis, keyspace.incident_log),
        CampaignTuningReader(settings, detector.campaigns),
    )
    # a decision older than the short window is judged no more: rounds after that skip
    return DetectionLoop(detector, actions, interval, metrics, quiet_ms=detector.window.short_ms)


async def run_embedded_detection(
    redis: Redis,
    keyspace: Keyspace,
    stop: asyncio.Event,
    model_dir: Path | None,
    metrics: DetectionMetrics | None = None,
    fitter: Fitter | None = None,
) -> None:
    """Detect on the Valkey event stream until ``stop`` is set (in the pipeline worker)."""

    loop = build_detection(redis, keyspace, model_dir, EVALUATION_INTERVAL, metrics, fitter)
    source = RedisDecisionSource(redis, keyspace.events)
    await source.ensure_group()
    await loop.resume()

    async def take_new() -> None:
        try:
            loop.observe(await source.read_available())
        except Exception:  # Redis away for a moment: the next round reads what it missed
            log.warning("reading decisions for detection failed", exc_info=True)

    log.info("detecting abuse in %s", keyspace.events)
    try:
        await loop.run(stop, take_new)
    finally:
        await loop.close()
        log.info("detection stopped: %s", loop.stats)
