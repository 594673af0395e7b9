"""Webhook signing secrets are sealed before they leave for the durable store.

The deliveries are signed with a webhook's secret, so the secret must come back whole after
a restore; but a copy in plain text in ClickHouse (or its backups) would let anyone who can
read that table forge deliveries.  A secret is therefore encrypted and authenticated with
keys derived from the key hashing secret (``RATEWATCH_KEY_SECRET`` or the data dir's
``key-secret``), which every limiter of a deployment has and the durable store never sees:

- two 32-byte keys by BLAKE3's key derivation, one to encrypt and one to authenticate;
- a random 24-byte nonce per sealing; the keystream is keyed BLAKE3 of the nonce in
  extendable-output mode (BLAKE3 is a PRF), XORed with the secret;
- a keyed BLAKE3 tag over nonce and ciphertext (encrypt-then-MAC), checked in constant time.

Changing the key hashing secret invalidates every key anyway; the sealed secrets then no
longer open either, and a restore says so instead of restoring a wrong secret.
"""

from __future__ import annotations

import base64
import hmac
import secrets

from blake3 import blake3

PREFIX = "sealed:v1:"
_NONCE = 24
_TAG = 32
_ENCRYPTION = "RateWatch control journal 2025-01 webhook secret encryption"
_AUTHENTICATION = "RateWatch control journal 2025-01 webhook secret authentication"


class SealError(ValueError):
    """A sealed value that does not open with this process's keys."""


class SecretSealer:
    def __init__(self, key_secret: bytes):
        self._encryption = blake3(key_secret, derive_key_context=_ENCRYPTION).digest()
        self._authentication = blake3(key_secret, derive_key_context=_AUTHENTICATION).digest()

    def seal(self, secret: str) -> str:
        """``secret`` encrypted and authenticated ("" stays "": there is nothing to hide)."""
        if not secret:
            return ""
        nonce = secrets.token_bytes(_NONCE)
        body = self._xor(nonce, secret.encode())
        tag = blake3(nonce + body, key=self._authentication).digest()
        return PREFIX + base64.urlsafe_b64encode(nonce + body + tag).decode("ascii")

    def open(self, sealed: str) -> str:
        """The secret ``seal`` sealed; SealError if it was not sealed with these keys."""
        if not sealed:
            return ""
        if not sealed.startswith(PREFIX):
            raise SealError("the value is not a sealed secret")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
        except ValueError:
            raise SealError("the sealed secret is not valid base64") from None
        if len(raw) < _NONCE + _TAG:
            raise SealError("the sealed secret is too short")
        nonce, body, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        expected = blake3(nonce + body, key=self._authentication).digest()
        if not hmac.compare_digest(tag, expected):
            raise SealError(
                "the sealed secret does not open with this key hashing secret "
                "(was RATEWATCH_KEY_SECRET changed?)"
            )
        return self._xor(nonce, body).decode()

    def _xor(self, nonce: bytes, data: bytes) -> bytes:
        stream = blake3(nonce, key=self._encryption).digest(length=len(data))
        return bytes(a ^ b for a, b in zip(data, stream, strict=True))
