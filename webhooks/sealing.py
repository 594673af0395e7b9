"""Webhook signing secrets sealed at rest (``limiter/state/sealing.py``: AES-256-GCM under a
key derived from the server's key secret for this use alone).

The deliveries must be signed with the secret itself, so it cannot be hashed like an API
key; it is encrypted instead, so a copy of Redis (or of Valkey's append-only file, or of
the durable copy) holds no usable secret.  Each sealed value is bound to its tenant and
webhook id: moved to another webhook it does not open.  Records written before sealing hold
the secret in plain text; they are read as they are, and ``webhooks.registry.WebhookStore``
seals them when it first reads them (the worker at a delivery, the API when it lists or
changes them).
"""

from __future__ import annotations

from limiter.errors import ConfigError
from limiter.state import sealing
from limiter.state.sealing import PREFIX as SEALED_PREFIX
from limiter.state.sealing import SealError, is_sealed

_PURPOSE = b"ratewatch webhook signing secrets v1"

__all__ = ["SEALED_PREFIX", "SecretSealer", "is_sealed"]


class SecretSealer:
    """Seals and opens webhook secrets with a key derived from ``server_secret``."""

    def __init__(self, server_secret: bytes) -> None:
        self._sealer = sealing.SecretSealer(server_secret, _PURPOSE)

    def seal(self, secret: str, tenant: str, webhook_id: str) -> str:
        """``secret`` encrypted for the webhook ``webhook_id`` of ``tenant``."""
        return self._sealer.seal(secret, _bound(tenant, webhook_id))

    def open(self, stored: str, tenant: str, webhook_id: str) -> str:
        """The secret ``stored`` holds (as it is if it was stored before sealing);
        ConfigError if it was sealed under another server secret or for another webhook."""
        if not is_sealed(stored):
            return stored
        try:
            return self._sealer.open(stored, _bound(tenant, webhook_id))
        except SealError:
            raise ConfigError(
                f"the signing secret of webhook {webhook_id!r} does not open with this"
                " server's key secret: RATEWATCH_KEY_SECRET (or --data-dir) must be the one"
                " the webhook was created with"
            ) from None


def _bound(tenant: str, webhook_id: str) -> bytes:
    return f"{len(tenant)}:{tenant}/{webhook_id}".encode()
