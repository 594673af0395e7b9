"""Secrets the server must read back, sealed with a key derived from the key hashing secret.

Some secrets cannot be stored as a hash because the server computes HMACs with them: a
webhook's signing secret (``webhooks/sealing.py``) and a signed key's request signing
secret (in the key's record).  A copy in plain text in Redis, Valkey's append-only file,
ClickHouse or their backups would let anyone who can read them forge signatures, so each
is encrypted and authenticated with AES-256-GCM (``cryptography``) under a key that
HKDF-SHA256 derives from the key hashing secret (``RATEWATCH_KEY_SECRET`` or the data dir's
``key-secret``) for one purpose alone: a sealed webhook secret never opens as a signing
secret.  Each sealing draws a random 96-bit nonce, and may be bound to what it belongs to
(associated data: a tenant and a webhook id), so that moved to another record it does not
open.  Changing the key hashing secret invalidates every key anyway; the sealed secrets
then no longer open either, and whoever opens one says so instead of using a wrong secret.

``cryptography`` is imported, and the key derived, at the first seal or open: most
limiter processes never seal anything (no signed keys, no webhooks created there), and the
library is some 10 MB of a process's resident memory once loaded.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import TYPE_CHECKING

from limiter.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "sealed:v1:"
_NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed value that does not open with this process's key (or for this record)."""


class SecretSealer:
    """Seals and opens the secrets of one ``purpose`` (a fixed, unique byte string: the key
    is derived from it)."""

    def __init__(self, key_secret: bytes, purpose: bytes):
        if len(key_secret) < 32:
            raise ConfigError("the key secret must have at least 32 bytes")
        self._key_secret = key_secret
        self._purpose = purpose
        self._cipher: AESGCM | None = None
        self._lock = threading.Lock()

    @property
    def _aead(self) -> AESGCM:
        cipher = self._cipher
        if cipher is None:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF

            with self._lock:
                if self._cipher is None:
                    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=self._purpose)
                    self._cipher = AESGCM(hkdf.derive(self._key_secret))
                cipher = self._cipher
        return cipher

    def seal(self, secret: str, bound: bytes = b"") -> str:
        """``secret`` encrypted and authenticated, bound to ``bound``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), bound)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str, bound: bytes = b"") -> str:
        """The secret ``seal`` sealed with the same ``bound``; SealError otherwise."""
        if not is_sealed(stored):
            raise SealError("the value is not a sealed secret")
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX) :])
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], bound)
        except (InvalidTag, ValueError):
            raise SealError(
                "the sealed secret does not open with this server's key secret"
            ) from None
        return plain.decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
