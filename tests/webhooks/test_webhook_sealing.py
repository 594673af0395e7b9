"""Webhook signing secrets sealed at rest, against the session's real Redis: what is stored
is ciphertext bound to its webhook, a record stored in plain text (before sealing) keeps
working and is sealed when read, and deliveries are signed with the secret itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

import pytest
from redis.asyncio import Redis

from limiter.errors import ConfigError
from limiter.keyspace import Keyspace
from tests.support.credentials import KEY_SECRET, SEALER
from tests.support.events import block_alert
from tests.support.outboxes import record_alerts
from tests.support.polling import eventually
from tests.support.webhook_receiver import Received, Receiver
from tests.support.webhook_worker import start_worker
from webhooks.registry import WebhookStore, new_secret
from webhooks.sealing import SEALED_PREFIX, SecretSealer, is_sealed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace("rwseal" + secrets.token_hex(4))


def signed_with(secret: str, request: Received) -> bool:
    headers = request.headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request.body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return headers["webhook-signature"] == f"v1,{expected}"


def test_a_sealed_secret_opens_only_for_its_webhook_and_server_secret() -> None:
    secret = new_secret()
    sealed = SEALER.seal(secret, "acme", "wh_1")
    assert sealed.startswith(SEALED_PREFIX)
    assert secret not in sealed
    assert secret.removeprefix("whsec_") not in sealed
    assert SEALER.seal(secret, "acme", "wh_1") != sealed  # a fresh nonce each time
    assert SEALER.open(sealed, "acme", "wh_1") == secret
    for tenant, webhook_id in (("acme", "wh_2"), ("other", "wh_1")):
        with pytest.raises(ConfigError, match="does not open"):
            SEALER.open(sealed, tenant, webhook_id)
    with pytest.raises(ConfigError, match="RATEWATCH_KEY_SECRET"):
        SecretSealer(bytes(32)).open(sealed, "acme", "wh_1")
    with pytest.raises(ConfigError, match="RATEWATCH_KEY_SECRET"):
        SEALER.open(sealed[:-4] + "AAAA", "acme", "wh_1")
    # stored before sealing: read as it is
    assert SEALER.open(secret, "acme", "wh_1") == secret
    with pytest.raises(ConfigError, match="32 bytes"):
        SecretSealer(b"short")


async def test_a_plain_text_secret_is_sealed_when_read_and_still_signs(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", receiver.url(), allow_private=True)
    raw = await worker_redis.hget(keyspace.webhooks("acme"), hook.id)
    assert raw is not None
    assert hook.secret.encode() not in raw
    assert is_sealed(json.loads(raw)["secret"])

    # a record as an earlier version stored it: the secret in plain text
    record = {**json.loads(raw), "secret": hook.secret}
    await worker_redis.hset(keyspace.webhooks("acme"), hook.id, json.dumps(record))
    assert (await store.get("acme", hook.id)).secret == hook.secret
    raw = await worker_redis.hget(keyspace.webhooks("acme"), hook.id)
    assert raw is not None
    assert hook.secret.encode() not in raw
    assert SEALER.open(json.loads(raw)["secret"], "acme", hook.id) == hook.secret

    await worker_redis.hset(keyspace.webhooks("acme"), hook.id, json.dumps(record))
    running = start_worker(worker_redis, keyspace)
    try:
        await record_alerts(worker_redis, keyspace, block_alert("acme"))
        await eventually(lambda: len(receiver.requests) >= 1, 20, "a delivery")
    finally:
        await running.halt()
    assert signed_with(hook.secret, receiver.requests[0])
    raw = await worker_redis.hget(keyspace.webhooks("acme"), hook.id)
    assert raw is not None
    assert hook.secret.encode() not in raw


async def test_a_worker_with_another_key_secret_fails_clearly(
    worker_redis: Redis, keyspace: Keyspace
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", "https://hooks.example.com/x")
    other = WebhookStore(worker_redis, keyspace, SecretSealer(bytes(reversed(KEY_SECRET))))
    with pytest.raises(ConfigError, match=f"webhook {hook.id!r} does not open"):
        await other.get("acme", hook.id)
