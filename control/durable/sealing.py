"""Webhook signing secrets are sealed before they leave for the durable store.

The deliveries are signed with a webhook's secret, so the secret must come back whole after
a restore; but a copy in plain text in ClickHouse (or its backups) would let anyone who can
read that table forge deliveries.  It is sealed as ``limiter/state/sealing.py`` describes,
with keys of its own purpose.
"""

from __future__ import annotations

from limiter.state import sealing
from limiter.state.sealing import PREFIX, SealError

__all__ = ["PREFIX", "SealError", "SecretSealer"]

# the context the webhook secrets of existing journals were sealed under: never changes
_CONTEXT = "RateWatch control journal 2025-01 webhook secret"


class SecretSealer(sealing.SecretSealer):
    def __init__(self, key_secret: bytes):
        super().__init__(key_secret, _CONTEXT)
