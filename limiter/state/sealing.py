"""Secrets the server must read back, sealed with keys derived from the key hashing secret.

Some secrets cannot be stored as a hash because the server computes HMACs with them: a
webhook's signing secret (sealed in the durable copy, ``control/durable/``) and a signed
key's request signing secret (sealed in the key's record, in Redis and in the durable copy).
A copy in plain text in Redis, ClickHouse or their backups would let anyone who can read
them forge signatures, so each is encrypted and authenticated with keys derived from the
key hashing secret (``RATEWATCH_KEY_SECRET`` or the data dir's ``key-secret``), which every
limiter of a deployment has and the stores never see:

- two 32-byte keys by BLAKE3's key derivation, one to encrypt and one to authenticate, from
  a context that names what is sealed (a sealed webhook secret never opens as a signing
  secret);
- a random 24-byte nonce per sealing; the keystream is keyed BLAKE3 of the nonce in
  extendable-output mode (BLAKE3 is a PRF), XORed with the secret;
- a keyed BLAKE3 tag over nonce and ciphertext (encrypt-then-MAC), checked in constant time.

Changing the key hashing secret invalidates every key anyway; the sealed secrets then no
longer open either, and whoever opens one says so instead of using a wrong secret.
"""

from __future__ import annotations

import base64
import hmac
import secrets

from blake3 import blake3

PREFIX = "sealed:v1:"
_NONCE = 24
_TAG = 32


class SealError(ValueError):
    """A sealed value that does not open with this process's keys."""


class SecretSealer:
    """Seals and opens the secrets of one purpose, named by ``context`` (a fixed, unique
    string: the keys are derived from it)."""

    def __init__(self, key_secret: bytes, context: str):
        self._encryption = blake3(key_secret, derive_key_context=context + " encryption").digest()
        self._authentication = blake3(
            key_secret, derive_key_context=context + " authentication"
        ).digest()

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
