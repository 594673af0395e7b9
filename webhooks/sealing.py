"""Webhook signing secrets sealed at rest: AES-256-GCM under a key derived from the server
secret.

The deliveries must be signed with the secret itself, so it cannot be hashed like an API
key; it is encrypted instead, with a key that HKDF-SHA256 derives from the server's key
secret (``RATEWATCH_KEY_SECRET`` or ``<data-dir>/key-secret``) for this use alone, so a
copy of Redis (or of Valkey's append-only file) holds no usable secret.  Each sealed value
is bound to its tenant and webhook id (associated data): moved to another webhook it does
not open.  Records written before sealing hold the secret in plain text; they are read as
they are, and ``webhooks.registry.WebhookStore`` seals them when it first reads them (the
worker at a delivery, the API when it lists or changes them).
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from limiter.errors import ConfigError

SEALED_PREFIX = "sealed:v1:"
_INFO = b"ratewatch webhook signing secrets v1"
_NONCE_BYTES = 12


class SecretSealer:
    """Seals and opens webhook secrets with a key derived from ``server_secret``."""

    def __init__(self, server_secret: bytes) -> None:
        if len(server_secret) < 32:
            raise ConfigError("the server secret must have at least 32 bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            server_secret
        )
        self._aead = AESGCM(key)

    def seal(self, secret: str, tenant: str, webhook_id: str) -> str:
        """``secret`` encrypted for the webhook ``webhook_id`` of ``tenant``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), _bound(tenant, webhook_id))
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str, tenant: str, webhook_id: str) -> str:
        """The secret ``stored`` holds (as it is if it was stored before sealing);
        ConfigError if it was sealed under another server secret or for another webhook."""
        if not is_sealed(stored):
            return stored
        try:
            raw = base64.urlsafe_b64decode(stored[len(SEALED_PREFIX) :])
            plain = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _bound(tenant, webhook_id)
            )
        except (InvalidTag, ValueError):
            raise ConfigError(
                f"the signing secret of webhook {webhook_id!r} does not open with this"
                " server's key secret: RATEWATCH_KEY_SECRET (or --data-dir) must be the one"
                " the webhook was created with"
            ) from None
        return plain.decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def _bound(tenant: str, webhook_id: str) -> bytes:
    return f"{len(tenant)}:{tenant}/{webhook_id}".encode()
