"""Managing webhooks: PATCH (atomic, validated, audited), disabling, secret rotation with a
grace period, retry jitter, and the delivery metrics of /metrics.

Against the session's Redis and limiter, a real HTTP receiver and the real delivery worker
(``tests.support.webhook_worker``); the metrics against a limiter of their own."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from standardwebhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from limiter.keyspace import Keyspace
from stream import audit
from stream.alerts import BLOCK_CREATED, BLOCK_SHADOWED
from stream.events import OUTBOX_FIELD
from tests.support.credentials import SEALER, create_key
from tests.support.events import block_alert
from tests.support.openapi import values
from tests.support.outboxes import record_alerts
from tests.support.polling import eventually, eventually_awaited
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter
from tests.support.webhook_receiver import Received, Receiver
from tests.support.webhook_worker import Running, start_worker
from webhooks.delivery import WebhookSettings
from webhooks.payloads import ping_delivery, signature_headers
from webhooks.queue import DeliveryQueue
from webhooks.registry import ALERT_KINDS, Webhook, WebhookStore
from webhooks.retry import RetryPolicy
from webhooks.sealing import is_sealed
from webhooks.updates import SECRET_GRACE_SECONDS, WebhookChanges, WebhookUpdater
from webhooks.worker import WebhookWorker

pytestmark = pytest.mark.timeout(120)

URL = "https://hooks.example.com/rw/secret-path"


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace("rwwa" + secrets.token_hex(4))


def signatures(request: Received) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


def verifies(secret: str, request: Received) -> bool:
    """Whether a receiver holding only ``secret`` accepts the request (reference library)."""
    try:
        Verifier(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


async def delivered(redis: Redis, keyspace: Keyspace, receiver: Receiver) -> Received:
    """What ``receiver`` gets when a worker delivers one block alert of acme's."""
    running = start_worker(redis, keyspace)
    try:
        await record_alerts(redis, keyspace, block_alert("acme"))
        await eventually(lambda: len(receiver.requests) == 1, 20, "the delivery")
    finally:
        await running.halt()
    [request] = receiver.requests
    return request


def audited(redis_url: str, tenant: str, action: str) -> list[audit.AuditEvent]:
    """The tenant's entries of ``action`` in the session limiter's audit outbox."""
    client = SyncRedis.from_url(redis_url)
    try:
        entries = client.xrange(Keyspace().audit)
    finally:
        client.close()
    events = [audit.decode(fields[OUTBOX_FIELD]) for _, fields in entries]
    return [e for e in events if e.tenant == tenant and e.action == action]


def stored(redis_url: str, tenant: str, webhook_id: str) -> dict[str, Any]:
    """The webhook's record as the session limiter stored it, its secrets opened: they are
    stored sealed, the plain secret nowhere in the raw record."""
    client = SyncRedis.from_url(redis_url)
    try:
        raw = client.hget(Keyspace().webhooks(tenant), webhook_id)
    finally:
        client.close()
    assert raw is not None
    kept: dict[str, Any] = json.loads(raw)
    for name in ("secret", "previous_secret"):
        if kept.get(name):
            assert is_sealed(kept[name]), kept
            kept[name] = SEALER.open(kept[name], tenant, webhook_id)
            assert kept[name].encode() not in raw
    return kept


# units: the retry jitter, the secrets a delivery is signed with ---------------------------


def test_retry_delays_are_jittered_within_ten_percent_and_the_first_attempt_is_not() -> None:
    schedule = (0.0, 5.0, 300.0, 1800.0)
    policy = RetryPolicy(schedule, rng=random.Random(7))
    for attempt in (1, 2, 3):
        delay = schedule[attempt]
        drawn = [policy.delay_after(attempt) for _ in range(2000)]
        assert all(d is not None and 0.9 * delay <= d <= 1.1 * delay for d in drawn), attempt
        values = [d for d in drawn if d is not None]
        # spread over the whole band, not stuck at one end: no lockstep
        assert min(values) < 0.91 * delay
        assert max(values) > 1.09 * delay
        assert len(set(values)) > 1900
    assert policy.delay_after(len(schedule)) is None  # the last attempt has no retry
    assert policy.delay_after(0) is None  # the first attempt is due when queued, unjittered
    assert RetryPolicy((0, 0.0, 60.0), rng=random.Random(1)).delay_after(1) == 0.0
    assert RetryPolicy(schedule, jitter=0).delay_after(2) == 300.0
    same = [RetryPolicy(schedule, rng=random.Random(3)).delay_after(2) for _ in range(2)]
    assert same[0] == same[1] != 300.0  # the injected generator decides
    for jitter in (1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match=f"jitter {jitter!r}"):
            RetryPolicy(schedule, jitter=jitter)
    with pytest.raises(ValueError, match="jitter"):
        WebhookSettings(retry_jitter=1.5)


def test_a_replaced_secret_signs_until_its_grace_period_ends() -> None:
    hook = Webhook(
        id="wh_1",
        tenant="acme",
        url=URL,
        events=ALERT_KINDS,
        description="",
        created_at=1.0,
        secret="whsec_new",
        previous_secret="whsec_old",
        previous_secret_expires_at=1000.0,
    )
    assert hook.signing_secrets(999.999) == ("whsec_new", "whsec_old")
    assert hook.signing_secrets(1000.0) == ("whsec_new",)
    never_rotated = Webhook("wh_2", "acme", URL, ALERT_KINDS, "", 1.0, "whsec_only")
    assert never_rotated.signing_secrets(0.0) == ("whsec_only",)
    assert never_rotated.enabled
    assert never_rotated.wants(BLOCK_CREATED)
    assert not replace(never_rotated, enabled=False).wants(BLOCK_CREATED)


def test_both_signatures_verify_with_the_reference_library() -> None:
    old, new = _secret(), _secret()
    body = b'{"type":"block.created"}'
    headers = signature_headers((new, old), "wh_1_abc", int(time.time()), body)
    request = Received("/", headers, body)
    assert len(signatures(request)) == 2
    alone = signature_headers(new, "wh_1_abc", int(headers["webhook-timestamp"]), body)
    assert signatures(request)[0] == alone["webhook-signature"]  # the current secret's first
    assert verifies(old, request)
    assert verifies(new, request)
    assert not verifies(_secret(), request)
    with pytest.raises(ValueError, match="at least one secret"):
        signature_headers((), "wh_1_abc", 0, body)


# the worker: disabled webhooks, rotation, jitter, against the session's Redis -------------


async def test_a_disabled_webhook_is_sent_nothing_while_an_enabled_one_is(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    failing = Receiver(statuses=[503]).start()
    try:
        store = WebhookStore(worker_redis, keyspace, SEALER)
        updater = WebhookUpdater(worker_redis, keyspace, SEALER)
        paused = await store.create("acme", failing.url("/paused"), allow_private=True)
        active = await store.create("acme", receiver.url("/active"), allow_private=True)
        # the retry falls due well after the webhook is disabled
        running = start_worker(worker_redis, keyspace, retry_schedule=(0, 2.0, 2.0))
        sender = running.worker.sender
        try:
            first = block_alert("acme")
            await record_alerts(worker_redis, keyspace, first)
            await eventually(lambda: len(failing.requests) == 1, 20, "the failed first attempt")
            await eventually(lambda: len(receiver.requests) == 1, 20, "the enabled one's delivery")
            await eventually(lambda: not sender._in_flight, 10, "the attempts recorded")
            # its retry is queued; disabling drops it when it falls due
            await updater.update("acme", paused.id, WebhookChanges(enabled=False))
            second = block_alert("acme", BLOCK_SHADOWED)
            await record_alerts(worker_redis, keyspace, second)
            await eventually(lambda: len(receiver.requests) == 2, 20, "the enabled one's second")

            async def skipped() -> bool:
                attempts = await store.attempts("acme", paused.id)
                return bool(attempts) and attempts[0].outcome == "skipped"

            await eventually_awaited(skipped, 20, "the queued retry dropped as skipped")
            assert await running.worker.queue.scheduled(paused.id) == []
            [dropped, failed] = await store.attempts("acme", paused.id)
            assert (dropped.outcome, dropped.attempt, dropped.status) == ("skipped", 2, None)
            assert dropped.event_id == first.event_id
            assert dropped.error == "webhook disabled: not sent"
            assert (failed.outcome, failed.status) == ("retrying", 503)
            # nothing was sent, so nothing is known of the endpoint
            health = (await store.health("acme", [paused.id]))[paused.id]
            assert health["consecutive_failures"] == 1
            assert health["last_status"] == 503
            assert len(failing.requests) == 1

            await updater.update("acme", paused.id, WebhookChanges(enabled=True))
            third = block_alert("acme")
            await record_alerts(worker_redis, keyspace, third)
            await eventually(
                lambda: len(failing.requests) == 2, 20, "the re-enabled one's delivery"
            )
            await eventually(lambda: len(receiver.requests) == 3, 20, "the enabled one's third")
        finally:
            await running.halt()
    finally:
        failing.stop()
    sent_to_paused = [r.json()["data"]["event_id"] for r in failing.requests]
    assert sent_to_paused == [first.event_id, third.event_id]
    sent_to_active = sorted(r.json()["data"]["event_id"] for r in receiver.requests)
    assert sent_to_active == sorted([first.event_id, second.event_id, third.event_id])
    assert Verifier(active.secret).verify(receiver.requests[0].body, receiver.requests[0].headers)


async def test_during_the_grace_period_old_and_new_secret_both_verify(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", receiver.url(), allow_private=True)
    before = time.time()
    rotated = await WebhookUpdater(worker_redis, keyspace, SEALER).rotate_secret("acme", hook.id)
    new = rotated.after.secret
    assert new.startswith("whsec_")
    assert new != hook.secret
    assert rotated.after.previous_secret == hook.secret
    expires = rotated.after.previous_secret_expires_at
    assert expires is not None
    # stored to the millisecond, rounded either way
    assert (
        before + SECRET_GRACE_SECONDS - 0.001
        <= expires
        <= time.time() + SECRET_GRACE_SECONDS + 0.001
    )
    request = await delivered(worker_redis, keyspace, receiver)
    assert len(signatures(request)) == 2
    assert verifies(hook.secret, request)  # a receiver that has not switched yet
    assert verifies(new, request)  # and one that has
    assert not verifies(_secret(), request)


# anyio marked at collection, or the parameters are lost
# (see tests/limiter/test_algorithms_parity.py)
@pytest.mark.anyio
@pytest.mark.parametrize("ended", ["clock", "no grace"])
async def test_after_the_grace_period_only_the_new_secret_verifies(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver, ended: str
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", receiver.url(), allow_private=True)
    if ended == "clock":  # rotated a day and a second ago
        updater = WebhookUpdater(
            worker_redis, keyspace, SEALER, clock=lambda: time.time() - SECRET_GRACE_SECONDS - 1
        )
    else:
        updater = WebhookUpdater(worker_redis, keyspace, SEALER, secret_grace=0)
    new = (await updater.rotate_secret("acme", hook.id)).after.secret
    request = await delivered(worker_redis, keyspace, receiver)
    assert len(signatures(request)) == 1
    assert verifies(new, request)
    assert not verifies(hook.secret, request)


async def test_a_second_rotation_keeps_only_the_secret_it_replaced(
    worker_redis: Redis, keyspace: Keyspace
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", URL)
    updater = WebhookUpdater(worker_redis, keyspace, SEALER)
    first = (await updater.rotate_secret("acme", hook.id)).after
    second = (await updater.rotate_secret("acme", hook.id)).after
    assert second.previous_secret == first.secret
    assert hook.secret not in second.signing_secrets(time.time())
    assert await store.get("acme", hook.id) == second
    with pytest.raises(ValueError, match="grace"):
        WebhookUpdater(worker_redis, keyspace, SEALER, secret_grace=-1)


async def test_a_retry_is_scheduled_with_the_injected_jitter(
    worker_redis: Redis, keyspace: Keyspace
) -> None:
    down = Receiver()  # nothing listens on its port
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", down.url(), allow_private=True)
    options = WebhookSettings(
        allow_private=True, poll_interval=0.1, retry_schedule=(0, 100.0), retry_jitter=0.1
    )
    worker = WebhookWorker(
        worker_redis,
        keyspace,
        SEALER,
        options,
        consumer="w1",
        block_ms=100,
        rng=random.Random(42),
    )
    stop = asyncio.Event()
    running = Running(worker, stop, asyncio.create_task(worker.run(stop)))
    expected = 100.0 * (1 + random.Random(42).uniform(-0.1, 0.1))
    try:
        await record_alerts(worker_redis, keyspace, block_alert("acme"))
        await eventually(lambda: running.worker.sender.attempts == 1, 20, "the failed attempt")
        await eventually(lambda: not running.worker.sender._in_flight, 10, "the attempt recorded")
    finally:
        await running.halt()
    [attempt] = await store.attempts("acme", hook.id)
    assert attempt.outcome == "retrying"
    assert attempt.next_retry_at is not None
    assert attempt.next_retry_at - attempt.at == pytest.approx(expected, abs=0.002)
    assert 90 <= attempt.next_retry_at - attempt.at <= 110
    [(_, due)] = await running.worker.queue.scheduled(hook.id)
    assert due == pytest.approx(attempt.next_retry_at, abs=0.002)


async def test_concurrent_changes_of_different_fields_are_all_kept(
    worker_redis: Redis, keyspace: Keyspace
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    updater = WebhookUpdater(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", URL)
    for round_ in range(20):
        kinds = [ALERT_KINDS[round_ % len(ALERT_KINDS)]]
        await asyncio.gather(
            updater.update("acme", hook.id, WebhookChanges(description=f"round {round_}")),
            updater.update("acme", hook.id, WebhookChanges(events=kinds)),
            updater.update("acme", hook.id, WebhookChanges(enabled=round_ % 2 == 0)),
            updater.update("acme", hook.id, WebhookChanges(url=f"https://h{round_}.example.com/x")),
            updater.rotate_secret("acme", hook.id),
        )
        now = await store.get("acme", hook.id)
        assert (now.description, now.events, now.enabled, now.url) == (
            f"round {round_}",
            tuple(kinds),
            round_ % 2 == 0,
            f"https://h{round_}.example.com/x",
        )
        assert now.previous_secret  # the rotation was kept too


# the API, on the session's limiter -----------------------------------------------------------


def test_patch_changes_each_field_and_only_the_fields_given(
    api: httpx.Client, redis_server: RedisServer, tenant: str
) -> None:
    created = api.post("/v1/webhooks", json={"url": URL, "description": "pager"}).json()
    assert created["enabled"] is True
    hook_id = created["id"]
    moved = "https://other.example.com:8443/new/path"
    # stored through Redis's cjson: non-ASCII, escapes and a NUL come back as they were
    text = 'on-call 🚨 "Ünïcode" / \\ \u0000 end'
    twice = [BLOCK_SHADOWED, BLOCK_CREATED, BLOCK_SHADOWED]
    changes: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"url": f"  {moved}  "}, {"url": moved}),
        ({"events": twice}, {"events": [BLOCK_SHADOWED, BLOCK_CREATED]}),
        ({"description": text}, {"description": text}),
        ({"enabled": False}, {"enabled": False}),
        ({"enabled": True, "description": ""}, {"enabled": True, "description": ""}),
    ]
    expected = {k: created[k] for k in ("id", "url", "events", "description", "enabled")}
    expected["created_at"] = created["created_at"]
    for body, change in changes:
        response = api.patch(f"/v1/webhooks/{hook_id}", json=body)
        assert response.status_code == 200, (body, response.text)
        expected.update(change)
        assert response.json() == expected
        assert "secret" not in response.text
        [listed] = api.get("/v1/webhooks").json()["webhooks"]
        assert {k: listed[k] for k in expected} == expected
    # the secret is untouched by a PATCH
    assert stored(redis_server.url, tenant, hook_id)["secret"] == created["secret"]
    unchanged = api.patch(f"/v1/webhooks/{hook_id}", json={})
    assert unchanged.status_code == 200
    assert unchanged.json() == expected

    entries = audited(redis_server.url, tenant, "webhook.updated")
    assert [e.details["changed"] for e in entries] == [
        "url",
        "events",
        "description",
        "enabled",
        "description,enabled",
    ]
    assert entries[0].details["host"] == "other.example.com:8443"
    assert entries[1].details["events"] == f"{BLOCK_SHADOWED},{BLOCK_CREATED}"
    assert entries[3].details["enabled"] is False
    assert all(e.target == hook_id for e in entries)
    for entry in entries:
        text = audit.encode(entry).decode()
        assert "/new/path" not in text
        assert "secret-path" not in text
        assert created["secret"] not in text


def test_a_webhook_created_disabled_is_listed_so_and_cannot_be_tested(api: httpx.Client) -> None:
    created = api.post("/v1/webhooks", json={"url": URL, "enabled": False})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["enabled"] is False
    [listed] = api.get("/v1/webhooks").json()["webhooks"]
    assert listed["enabled"] is False
    ping = api.post(f"/v1/webhooks/{hook['id']}/test")
    assert ping.status_code == 409
    assert ping.json()["type"] == "urn:ratewatch:problem:webhook-disabled"
    assert api.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True}).status_code == 200
    assert api.post(f"/v1/webhooks/{hook['id']}/test").status_code == 202


BAD_UPDATES: list[tuple[object, int, str]] = [
    ({"enabled": "yes"}, 422, "$.enabled"),
    ({"enabled": None}, 422, "$.enabled"),
    ({"url": None}, 422, "$.url"),
    ({"url": ""}, 422, "$.url"),
    ({"url": "ftp://hooks.example.com/"}, 422, "ftp://hooks.example.com/"),
    ({"url": "https://" + "a" * 3000 + ".com/"}, 422, "$.url"),
    ({"url": "http://exa mple.com/"}, 422, "spaces"),
    ({"events": ["block.created", "block.exploded"]}, 422, "block.exploded"),
    ({"events": []}, 422, "at least one"),
    ({"events": None}, 422, "$.events"),
    ({"events": "block.created"}, 422, "$.events"),
    ({"description": "d" * 501}, 422, "$.description"),
    ({"description": 5}, 422, "$.description"),
    ({"secret": "whsec_AAAA"}, 422, "secret"),
    ({"enabeld": False}, 422, "enabeld"),
    ({"id": "wh_other"}, 422, "id"),
    ([], 422, "object"),
    ("not json", 400, ""),
]


def test_bad_updates_are_problems_naming_the_bad_value_and_change_nothing(
    api: httpx.Client,
) -> None:
    hook = api.post("/v1/webhooks", json={"url": URL}).json()
    path = f"/v1/webhooks/{hook['id']}"
    for body, status, words in BAD_UPDATES:
        response = (
            api.patch(path, content=body) if isinstance(body, str) else api.patch(path, json=body)
        )
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"], (body, response.text)
    for url in ("http://127.0.0.1/hook", "http://169.254.169.254/latest", "https://localhost/"):
        refused = api.patch(path, json={"url": url})
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"] == "urn:ratewatch:problem:webhook-target-refused"
    assert api.patch(path, content=b"x" * 70_000).status_code == 413
    missing = api.patch("/v1/webhooks/wh_nope", json={"enabled": False})
    assert missing.status_code == 404
    assert "wh_nope" in missing.json()["detail"]
    assert api.post("/v1/webhooks/wh_nope/rotate-secret").status_code == 404
    [listed] = api.get("/v1/webhooks").json()["webhooks"]
    assert {k: listed[k] for k in hook if k != "secret"} == {
        k: v for k, v in hook.items() if k != "secret"
    }


def test_another_tenant_cannot_change_and_a_standard_key_may_not(
    api: httpx.Client,
    anon: httpx.Client,
    limiter: RatewatchProcess,
    redis_server: RedisServer,
    tenant: str,
) -> None:
    hook = api.post("/v1/webhooks", json={"url": URL}).json()
    other = create_key(redis_server.url, "t" + secrets.token_hex(6), admin=True)
    standard = create_key(redis_server.url, tenant)
    patch = f"/v1/webhooks/{hook['id']}"
    rotate = f"/v1/webhooks/{hook['id']}/rotate-secret"
    for key, status in [(other, 404), (standard, 403)]:
        headers = {"Authorization": f"Bearer {key}"}
        for response in (
            anon.patch(patch, json={"enabled": False}, headers=headers),
            anon.post(rotate, headers=headers),
        ):
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
    assert anon.patch(patch, json={"enabled": False}).status_code == 401
    assert anon.post(rotate).status_code == 401
    kept = stored(redis_server.url, tenant, hook["id"])
    assert (kept["enabled"], kept["secret"]) == (True, hook["secret"])
    assert "previous_secret" not in kept


async def test_concurrent_patches_through_the_api_lose_nothing(
    limiter: RatewatchProcess, admin_key: str
) -> None:
    async with httpx.AsyncClient(
        base_url=limiter.base_url, timeout=10, headers={"Authorization": f"Bearer {admin_key}"}
    ) as client:
        hook = (await client.post("/v1/webhooks", json={"url": URL})).json()
        path = f"/v1/webhooks/{hook['id']}"
        for round_ in range(10):
            bodies: list[dict[str, Any]] = [
                {"description": f"round {round_}"},
                {"events": [ALERT_KINDS[round_ % len(ALERT_KINDS)]]},
                {"enabled": round_ % 2 == 1},
                {"url": f"https://h{round_}.example.com/x"},
            ]
            answers = await asyncio.gather(*(client.patch(path, json=b) for b in bodies))
            assert [a.status_code for a in answers] == [200] * 4
            [listed] = (await client.get("/v1/webhooks")).json()["webhooks"]
            assert listed["description"] == f"round {round_}"
            assert listed["events"] == [ALERT_KINDS[round_ % len(ALERT_KINDS)]]
            assert listed["enabled"] is (round_ % 2 == 1)
            assert listed["url"] == f"https://h{round_}.example.com/x"


def test_rotating_the_secret_shows_the_new_one_once_and_is_audited(
    api: httpx.Client, redis_server: RedisServer, tenant: str
) -> None:
    hook = api.post("/v1/webhooks", json={"url": URL}).json()
    before = time.time()
    response = api.post(f"/v1/webhooks/{hook['id']}/rotate-secret")
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["id"] == hook["id"]
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != hook["secret"]
    assert hook["secret"] not in response.text
    expires = rotated["previous_secret_expires_at"]
    assert before + SECRET_GRACE_SECONDS - 1 <= expires <= time.time() + SECRET_GRACE_SECONDS
    kept = stored(redis_server.url, tenant, hook["id"])
    assert (kept["secret"], kept["previous_secret"]) == (rotated["secret"], hook["secret"])
    listed = api.get("/v1/webhooks").text
    assert rotated["secret"] not in listed
    assert hook["secret"] not in listed
    [entry] = audited(redis_server.url, tenant, "webhook.secret_rotated")
    assert entry.target == hook["id"]
    assert entry.details["host"] == "hooks.example.com"
    assert entry.details["previous_secret_expires_at"] == expires
    text = audit.encode(entry).decode()
    assert rotated["secret"] not in text
    assert hook["secret"] not in text
    assert "secret-path" not in text


def test_the_update_schema_is_published_and_matches_what_is_accepted(
    api: httpx.Client,
) -> None:
    spec = api.get("/openapi.json").json()
    assert "patch" in spec["paths"]["/v1/webhooks/{id}"]
    assert "post" in spec["paths"]["/v1/webhooks/{id}/rotate-secret"]
    schema = spec["components"]["schemas"]["WebhookUpdate"]
    properties = schema["properties"]
    assert set(properties) == {"url", "events", "description", "enabled"}
    assert schema["additionalProperties"] is False
    assert spec["components"]["schemas"]["WebhookCreate"]["properties"]["enabled"]["default"]
    reference = {"$ref": "#/components/schemas/WebhookUpdate", "components": spec["components"]}
    # rejected for rules a JSON schema cannot state: URL syntax and targets, known kinds
    beyond = ("ftp://", "spaces", "block.exploded", "at least one")
    for body, _, words in BAD_UPDATES:
        if isinstance(body, str) or words.startswith(beyond):
            continue
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, reference)

    path = f"/v1/webhooks/{api.post('/v1/webhooks', json={'url': URL}).json()['id']}"
    # any subset of the fields; URLs and kinds from valid ones (see beyond)
    bodies = st.fixed_dictionaries(
        {},
        optional={
            "url": st.sampled_from([URL, "http://93.184.215.14/x", "https://a.example/?q=1"]),
            "events": st.lists(st.sampled_from(ALERT_KINDS), min_size=1, max_size=4),
            "description": values(spec, properties["description"]),
            "enabled": values(spec, properties["enabled"]),
        },
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies)
    def accepted(body: dict[str, Any]) -> None:
        response = api.patch(path, json=body)
        assert response.status_code == 200, (body, response.text)
        answer = response.json()
        for name in ("url", "description", "enabled"):
            if name in body:
                assert answer[name] == body[name], name
        if "events" in body:
            assert answer["events"] == list(dict.fromkeys(body["events"]))

    accepted()


# /metrics: the delivery counts, from Redis, on a limiter of their own -----------------------


def webhook_metrics(base_url: str) -> dict[str, float]:
    response = httpx.get(base_url + "/metrics", timeout=5)
    assert response.status_code == 200
    return parse_webhook_metrics(response.text)


def parse_webhook_metrics(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ratewatch_webhook_deliveries_total":
                found[sample.labels["outcome"]] = sample.value
            elif sample.name == "ratewatch_webhook_queue_depth":
                found["queue_depth"] = sample.value
    return found


@pytest.fixture
def own_limiter(tmp_path: Path) -> Iterator[tuple[RedisServer, RatewatchProcess]]:
    """A Redis of its own and `ratewatch serve --workers 2` on it: the counts start at 0,
    and each worker process answers /metrics by itself."""
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        service = start_limiter(redis_server.url, tmp_path, "--workers", "2")
        yield redis_server, service
        service.stop()
    finally:
        redis_server.stop()


async def test_metrics_count_real_deliveries_by_outcome_once_across_workers(
    own_limiter: tuple[RedisServer, RatewatchProcess], receiver: Receiver
) -> None:
    redis_server, service = own_limiter
    assert webhook_metrics(service.base_url) == {
        "delivered": 0,
        "retrying": 0,
        "failed": 0,
        "skipped": 0,
        "queue_depth": 0,
    }
    redis = Redis.from_url(redis_server.url)
    limiters = Keyspace()
    try:
        store = WebhookStore(redis, limiters, SEALER)
        await store.create("acme", receiver.url("/up"), allow_private=True)
        await store.create("acme", Receiver().url("/down"), allow_private=True)  # no server
        paused = await store.create("globex", receiver.url("/off"), allow_private=True)
        await WebhookUpdater(redis, limiters, SEALER).update(
            "globex", paused.id, WebhookChanges(enabled=False)
        )
        queue = DeliveryQueue(redis, limiters)
        # due now for a disabled webhook (skipped), and one not due for an hour
        await queue.enqueue([ping_delivery("globex", paused.id)])
        await queue.enqueue([ping_delivery("globex", paused.id)], at=time.time() + 3600)
        running = start_worker(redis, limiters, retry_schedule=(0, 0.2))
        try:
            await record_alerts(redis, limiters, block_alert("acme"))
            expected = {
                "delivered": 1,
                "retrying": 1,
                "failed": 1,
                "skipped": 1,
                "queue_depth": 1,
            }

            async def reached() -> bool:
                async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as client:
                    text = (await client.get("/metrics")).text
                return parse_webhook_metrics(text) == expected

            await eventually_awaited(reached, 30, f"the metrics to reach {expected}")
        finally:
            await running.halt()
    finally:
        await redis.aclose()
    # each scrape may be answered by either worker: the same totals, never summed
    for _ in range(8):
        assert webhook_metrics(service.base_url) == expected
    assert [r.path for r in receiver.requests] == ["/up"]


def test_metrics_answer_without_the_webhook_counts_while_redis_is_down(
    own_limiter: tuple[RedisServer, RatewatchProcess],
) -> None:
    redis_server, service = own_limiter
    assert webhook_metrics(service.base_url)["queue_depth"] == 0
    redis_server.stop()
    for _ in range(4):
        started = time.monotonic()
        response = httpx.get(service.base_url + "/metrics", timeout=10)
        assert response.status_code == 200
        assert time.monotonic() - started < 5
        assert "ratewatch_redis_up" in response.text
        assert "ratewatch_webhook_" not in response.text


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
