"""Webhooks: the API, the SSRF guard, signing, and deliveries to a real HTTP receiver from
the worker (against the session's Redis) and from the whole stack (`ratewatch up`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook as Verifier

from limiter.errors import InvalidInput
from limiter.keyspace import Keyspace
from stream.alerts import (
    BLOCK_CREATED,
    BLOCK_SHADOWED,
    AlertEvent,
    new_alert_event,
)
from tests.support.credentials import SEALER, STACK_PREFIX, create_key
from tests.support.events import ALERT_EXPLANATION, block_alert
from tests.support.outboxes import record_alerts
from tests.support.polling import eventually, eventually_awaited, wait_until
from tests.support.servers import RatewatchProcess, RedisServer
from tests.support.webhook_receiver import Received, Receiver
from tests.support.webhook_worker import start_worker
from webhooks.delivery import WebhookSettings
from webhooks.payloads import alert_delivery, body_for, signature_headers
from webhooks.registry import ALERT_KINDS, MAX_WEBHOOKS_PER_TENANT, WebhookStore
from webhooks.targets import TargetRefused, parse_target, resolve_public

pytestmark = pytest.mark.timeout(120)

PRIVATE_URLS = [
    "http://127.0.0.1/hook",
    "http://10.1.2.3/hook",
    "http://[::1]:8080/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:127.0.0.1]/",
    "http://2130706433/",
    "http://0x7f.1/",
    "https://localhost/",
    "http://192.168.1.1:9000/",
    "http://0.0.0.0/",
]


def verified(secret: str, request: Received) -> Any:
    """The body, if its signature verifies with ``secret`` (by the reference library and
    by an independent HMAC)."""
    headers = request.headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request.body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    return Verifier(secret).verify(request.body, headers)


# units: the target guard, signing, the Slack body ----------------------------------------


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_the_target_guard_refuses_private_hosts_unless_allowed(url: str) -> None:
    with pytest.raises(TargetRefused):
        parse_target(url)
    assert parse_target(url, allow_private=True).url == url


def test_the_target_guard_takes_public_urls_and_names_bad_ones() -> None:
    target = parse_target("https://hooks.example.com:8443/rw?x=1")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 8443)
    assert parse_target("http://93.184.215.14/").port == 80
    for url, words in [
        ("ftp://example.com/", "http"),
        ("example.com/hook", "http"),
        ("http:///hook", "no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a URL"),
        ("http://exa mple.com/", "spaces"),
        ("http://example.com/" + "a" * 3000, "characters"),
    ]:
        with pytest.raises(InvalidInput, match=words) as caught:
            parse_target(url, allow_private=True)
        assert not isinstance(caught.value, TargetRefused)


async def test_names_that_resolve_to_private_addresses_are_refused() -> None:
    with pytest.raises(TargetRefused, match="non-public address"):
        await resolve_public("localhost", 80)


def test_the_signature_is_standard_webhooks() -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    body = b'{"type":"block.created"}'
    now = int(time.time())
    headers = signature_headers(secret, "wh_1_abc", now, body)
    request = Received("/", headers, body)
    assert verified(secret, request) == {"type": "block.created"}
    assert headers["webhook-timestamp"] == str(now)


def test_slack_urls_get_a_slack_message_with_escaped_values() -> None:
    alert = new_alert_event(
        "acme",
        BLOCK_CREATED,
        "key",
        "<!channel>",
        explanation=ALERT_EXPLANATION,
        block_id="blk_1",
        ttl_seconds=900,
        offence=1,
    )
    delivery = alert_delivery("acme", "wh_0123", alert)
    for url in ("https://hooks.slack.com/services/T0/B0/x", "https://chat.example/services/a"):
        message = json.loads(body_for(url, delivery))
        assert set(message) == {"text", "blocks"}
        assert "block" in message["text"]
        assert "&lt;!channel&gt;" in message["text"]
        assert "<!channel>" not in json.dumps(message)
        facts = json.dumps(message["blocks"])
        assert "15 min" in facts
        assert "0.98" in facts
        assert "1,800 checks/min" in facts
    standard = json.loads(body_for("https://example.com/hook", delivery))
    assert standard["type"] == BLOCK_CREATED
    assert standard["data"]["subject"] == "<!channel>"


def test_worker_settings_name_bad_values() -> None:
    with pytest.raises(ValueError, match="retry schedule"):
        WebhookSettings(retry_schedule=())
    with pytest.raises(ValueError, match="timeout"):
        WebhookSettings(request_timeout=0)
    with pytest.raises(ValueError, match="concurrency"):
        WebhookSettings(per_webhook=8, max_in_flight=4)


# the worker against the session's Redis ----------------------------------------------------


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace("rwwh" + secrets.token_hex(4))


async def test_a_failing_endpoint_is_retried_and_delivered_once_with_the_same_id(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", receiver.url(), allow_private=True)
    receiver.statuses = [500, 200]
    event = block_alert("acme")
    running = start_worker(worker_redis, keyspace, retry_schedule=(0, 0.2, 0.2, 0.2))
    try:
        await record_alerts(worker_redis, keyspace, event)
        await eventually(lambda: len(receiver.requests) >= 2, 20, "a failure and a retry")
        await eventually(
            lambda: running.worker.sender.attempts == 2 and not running.worker.sender._in_flight,
            10,
            "the second attempt recorded",
        )
        assert await running.worker.queue.scheduled() == []  # done: nothing left to send
    finally:
        await running.halt()
    first, second = receiver.requests
    assert (
        first.headers["webhook-id"] == second.headers["webhook-id"] == f"{hook.id}_{event.event_id}"
    )
    for request in (first, second):
        assert request.headers["content-type"] == "application/json"
        body = verified(hook.secret, request)
        assert body["type"] == BLOCK_CREATED
        assert body["data"] == json.loads(json.dumps(_builtins(event)))
        assert body["timestamp"].endswith("Z")
    attempts = await store.attempts("acme", hook.id)
    assert [(a.attempt, a.outcome, a.status) for a in attempts] == [
        (2, "delivered", 200),
        (1, "retrying", 500),
    ]
    assert attempts[1].next_retry_at is not None
    assert attempts[0].next_retry_at is None
    assert attempts[0].response == "ok"
    health = (await store.health("acme", [hook.id]))[hook.id]
    assert health["consecutive_failures"] == 0
    assert health["last_status"] == 200
    assert health["last_success_at"] >= health["last_failure_at"]


async def test_a_retry_pending_when_the_worker_stops_is_made_after_a_restart(
    worker_redis: Redis, keyspace: Keyspace
) -> None:
    down = Receiver()  # its port has no server yet: the endpoint is down
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", down.url(), allow_private=True)
    event = block_alert("acme")
    schedule = (0, 1.0, 1.0)
    running = start_worker(worker_redis, keyspace, retry_schedule=schedule)
    try:
        await record_alerts(worker_redis, keyspace, event)
        await eventually(lambda: running.worker.sender.attempts == 1, 20, "the first attempt")
        await eventually(lambda: not running.worker.sender._in_flight, 10, "the attempt recorded")
    finally:
        await running.halt()
    [(delivery, _due)] = await running.worker.queue.scheduled(hook.id)
    assert delivery.attempts == 1
    assert delivery.event_id == event.event_id
    failed = (await store.attempts("acme", hook.id))[0]
    assert failed.status is None
    assert failed.error
    assert failed.outcome == "retrying"
    assert (await store.health("acme", [hook.id]))[hook.id]["consecutive_failures"] == 1

    down.start()  # the endpoint is back; a new worker process takes over
    try:
        again = start_worker(worker_redis, keyspace, name="w2", retry_schedule=schedule)
        try:
            await eventually(lambda: len(down.requests) == 1, 20, "the retry after the restart")
            await eventually(lambda: again.worker.sender.attempts == 1, 10, "the retry recorded")
            await eventually(lambda: not again.worker.sender._in_flight, 10, "the retry recorded")
        finally:
            await again.halt()
    finally:
        down.stop()
    assert down.requests[0].headers["webhook-id"] == delivery.id
    assert verified(hook.secret, down.requests[0])["data"]["event_id"] == event.event_id
    latest = (await store.attempts("acme", hook.id))[0]
    assert (latest.attempt, latest.outcome) == (2, "delivered")
    assert await again.worker.queue.scheduled() == []


async def test_only_subscribed_kinds_and_the_tenants_own_webhooks_get_an_alert(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    created_only = await store.create(
        "acme", receiver.url("/created"), [BLOCK_CREATED], allow_private=True
    )
    every = await store.create("acme", receiver.url("/all"), allow_private=True)
    other = await store.create("globex", receiver.url("/globex"), allow_private=True)
    running = start_worker(worker_redis, keyspace)
    try:
        created, shadowed = block_alert("acme"), block_alert("acme", BLOCK_SHADOWED)
        await record_alerts(worker_redis, keyspace, created, shadowed, block_alert("globex"))
        await eventually(lambda: len(receiver.requests) == 4, 20, "four deliveries")
    finally:
        await running.halt()
    by_path: dict[str, list[str]] = {}
    for request in receiver.requests:
        body = verified(
            {"/created": created_only, "/all": every, "/globex": other}[request.path].secret,
            request,
        )
        by_path.setdefault(request.path, []).append(body["data"]["event_id"])
        assert body["data"]["tenant"] == ("globex" if request.path == "/globex" else "acme")
    assert by_path["/created"] == [created.event_id]
    assert sorted(by_path["/all"]) == sorted([created.event_id, shadowed.event_id])
    assert len(by_path["/globex"]) == 1


async def test_a_deleted_webhooks_pending_retries_are_dropped(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    hook = await store.create("acme", receiver.url(), allow_private=True)
    receiver.statuses = [503]
    running = start_worker(worker_redis, keyspace, retry_schedule=(0, 0.5, 0.5))
    try:
        await record_alerts(worker_redis, keyspace, block_alert("acme"))
        await eventually(lambda: running.worker.sender.attempts == 1, 20, "the failed attempt")
        await store.delete("acme", hook.id)  # the retry stays queued until it falls due
        await eventually(
            lambda: running.worker.sender.attempts == 1 and not running.worker.sender._in_flight,
            10,
            "the attempt settled",
        )

        async def empty() -> bool:
            return await running.worker.queue.scheduled() == []

        await eventually_awaited(empty, 10, "the retry of a deleted webhook dropped", 0.05)
    finally:
        await running.halt()
    assert len(receiver.requests) == 1
    assert await worker_redis.exists(keyspace.webhook_attempts("acme", hook.id)) == 0


async def test_private_targets_are_refused_at_delivery_unless_allowed(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    store = WebhookStore(worker_redis, keyspace, SEALER)
    # created while allowed; the worker does not allow them (a name that now resolves to a
    # private address: DNS rebinding)
    hook = await store.create("acme", f"http://localhost:{receiver.port}/hook", allow_private=True)
    running = start_worker(worker_redis, keyspace, allow_private=False, retry_schedule=(0,))
    try:
        await record_alerts(worker_redis, keyspace, block_alert("acme"))
        await eventually(lambda: running.worker.sender.attempts == 1, 20, "the refused attempt")
        await eventually(lambda: not running.worker.sender._in_flight, 10, "the attempt recorded")
    finally:
        await running.halt()
    assert receiver.requests == []
    [attempt] = await store.attempts("acme", hook.id)
    assert attempt.outcome == "failed"
    assert attempt.status is None
    assert attempt.error is not None
    assert "non-public address" in attempt.error


async def test_a_hanging_endpoint_does_not_hold_up_the_others(
    worker_redis: Redis, keyspace: Keyspace, receiver: Receiver
) -> None:
    slow = Receiver(delay=4.0).start()
    try:
        store = WebhookStore(worker_redis, keyspace, SEALER)
        await store.create("acme", slow.url(), allow_private=True)
        await store.create("acme", receiver.url(), allow_private=True)
        running = start_worker(
            worker_redis, keyspace, request_timeout=3.0, max_in_flight=4, per_webhook=2
        )
        try:
            await record_alerts(worker_redis, keyspace, *(block_alert("acme") for _ in range(12)))
            # well within the slow endpoint's first timeout, though it has 12 deliveries too
            await eventually(lambda: len(receiver.requests) == 12, 2.5, "the healthy endpoint's 12")
            assert len(slow.requests) <= 2
        finally:
            await running.halt()
    finally:
        slow.stop()


# the API, on the session's limiter (private targets refused) -------------------------------


def test_webhooks_are_created_listed_and_deleted_and_the_secret_is_shown_once(
    api: httpx.Client,
) -> None:
    created = api.post(
        "/v1/webhooks", json={"url": "https://hooks.example.com/rw", "description": "pager"}
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["id"].startswith("wh_")
    assert hook["url"] == "https://hooks.example.com/rw"
    assert hook["events"] == list(ALERT_KINDS)
    assert hook["description"] == "pager"
    assert hook["secret"].startswith("whsec_")
    assert len(base64.b64decode(hook["secret"].removeprefix("whsec_"))) >= 24
    listed = api.get("/v1/webhooks")
    assert listed.status_code == 200
    assert hook["secret"] not in listed.text
    assert "secret" not in listed.text
    [entry] = listed.json()["webhooks"]
    assert {k: entry[k] for k in ("id", "url", "events", "description", "created_at")} == {
        k: hook[k] for k in ("id", "url", "events", "description", "created_at")
    }
    assert entry["health"] == {
        "last_attempt_at": None,
        "last_success_at": None,
        "last_failure_at": None,
        "last_status": None,
        "last_error": None,
        "consecutive_failures": 0,
    }
    deliveries = api.get(f"/v1/webhooks/{hook['id']}/deliveries")
    assert deliveries.json() == {"webhook_id": hook["id"], "deliveries": []}
    assert hook["secret"] not in deliveries.text
    ping = api.post(f"/v1/webhooks/{hook['id']}/test")
    assert ping.status_code == 202
    assert ping.json()["type"] == "webhook.test"
    deleted = api.delete(f"/v1/webhooks/{hook['id']}")
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    assert hook["secret"] not in deleted.text
    assert api.get("/v1/webhooks").json() == {"webhooks": []}
    assert api.delete(f"/v1/webhooks/{hook['id']}").status_code == 404


def test_another_tenant_can_neither_see_nor_delete_a_webhook(
    api: httpx.Client, limiter: RatewatchProcess, redis_server: RedisServer
) -> None:
    hook = api.post("/v1/webhooks", json={"url": "https://hooks.example.com/a"}).json()
    other = create_key(redis_server.url, "t" + secrets.token_hex(6), admin=True)
    with httpx.Client(
        base_url=limiter.base_url, timeout=10, headers={"Authorization": f"Bearer {other}"}
    ) as b:
        assert b.get("/v1/webhooks").json() == {"webhooks": []}
        for method, path in [
            ("DELETE", f"/v1/webhooks/{hook['id']}"),
            ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
            ("POST", f"/v1/webhooks/{hook['id']}/test"),
        ]:
            response = b.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
    assert [h["id"] for h in api.get("/v1/webhooks").json()["webhooks"]] == [hook["id"]]


@pytest.mark.parametrize("url", PRIVATE_URLS[:4])
def test_private_targets_are_refused_with_problem_details(api: httpx.Client, url: str) -> None:
    response = api.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:ratewatch:problem:webhook-target-refused"
    assert "non-public" in problem["detail"]


def test_bad_webhook_requests_are_problems(
    api: httpx.Client, anon: httpx.Client, redis_server: RedisServer, tenant: str
) -> None:
    url = "https://hooks.example.com/x"
    for body, status, words in [
        ({"url": url, "events": ["block.created", "block.exploded", "nope"]}, 422, "nope"),
        ({"url": url, "events": []}, 422, "at least one"),
        ({"url": url, "events": "block.created"}, 422, "events"),
        ({"url": "ftp://hooks.example.com/"}, 422, "http"),
        ({"url": "https://" + "a" * 3000 + ".com/"}, 422, "url"),
        ({"url": url, "description": "d" * 501}, 422, "description"),
        ({}, 422, "url"),
        ({"url": 5}, 422, "url"),
        ("not json", 400, ""),
    ]:
        response = (
            api.post("/v1/webhooks", content=body)
            if isinstance(body, str)
            else api.post("/v1/webhooks", json=body)
        )
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"], (body, response.text)
    unknown = api.post("/v1/webhooks", json={"url": url, "events": ["block.exploded"]})
    assert "block.exploded" in unknown.json()["detail"]
    assert api.post("/v1/webhooks", content=b"x" * 70_000).status_code == 413
    assert api.get("/v1/webhooks/wh_nope/deliveries").status_code == 404
    hook = api.post("/v1/webhooks", json={"url": url}).json()
    for limit in ("0", "101", "x", "²", "9" * 5000):
        response = api.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": limit})
        assert response.status_code == 422, limit
    assert anon.get("/v1/webhooks").status_code == 401
    standard = create_key(redis_server.url, tenant)
    assert (
        anon.get("/v1/webhooks", headers={"Authorization": f"Bearer {standard}"}).status_code == 403
    )
    for _ in range(MAX_WEBHOOKS_PER_TENANT - 1):
        assert api.post("/v1/webhooks", json={"url": url}).status_code == 201
    too_many = api.post("/v1/webhooks", json={"url": url})
    assert too_many.status_code == 409
    assert too_many.json()["type"] == "urn:ratewatch:problem:too-many-webhooks"
    assert len(api.get("/v1/webhooks").json()["webhooks"]) == MAX_WEBHOOKS_PER_TENANT


def test_the_webhook_routes_are_documented(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert {"get", "post"} <= set(spec["paths"]["/v1/webhooks"])
    assert "delete" in spec["paths"]["/v1/webhooks/{id}"]
    assert "get" in spec["paths"]["/v1/webhooks/{id}/deliveries"]
    assert "post" in spec["paths"]["/v1/webhooks/{id}/test"]
    assert spec["components"]["schemas"]["WebhookCreate"]["required"] == ["url"]


# end to end through `ratewatch up` ---------------------------------------------------------


def stack_client(stack: RatewatchProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


def record_stack_alerts(redis_url: str, *alerts: AlertEvent) -> None:
    async def go() -> None:
        client = Redis.from_url(redis_url)
        try:
            await record_alerts(client, Keyspace(STACK_PREFIX), *alerts)
        finally:
            await client.aclose()

    asyncio.run(go())


@pytest.mark.timeout(240)
def test_alerts_reach_the_tenants_webhooks_through_the_stack_and_are_audited(
    stack: RatewatchProcess, redis_server: RedisServer, receiver: Receiver
) -> None:
    a, b = "t" + secrets.token_hex(6), "t" + secrets.token_hex(6)
    with (
        stack_client(stack, create_key(redis_server.url, a, admin=True, prefix=STACK_PREFIX)) as ca,
        stack_client(stack, create_key(redis_server.url, b, admin=True, prefix=STACK_PREFIX)) as cb,
    ):
        created = ca.post("/v1/webhooks", json={"url": receiver.url("/a")})
        assert created.status_code == 201, created.text
        hook_a = created.json()
        hook_b = cb.post(
            "/v1/webhooks", json={"url": receiver.url("/b"), "events": [BLOCK_SHADOWED]}
        ).json()
        for_a, for_b = block_alert(a), block_alert(b, BLOCK_SHADOWED, "198.51.100.7")
        record_stack_alerts(redis_server.url, for_a, block_alert(b), for_b)
        wait_until(lambda: len(receiver.requests) >= 2, 60, "the stack's deliveries", 0.1)

        ping = ca.post(f"/v1/webhooks/{hook_a['id']}/test")
        assert ping.status_code == 202
        wait_until(lambda: len(receiver.requests) >= 3, 30, "the test ping", 0.1)
        requests = {r.path: r for r in receiver.requests[:2]}
        body_a = verified(hook_a["secret"], requests["/a"])
        assert body_a["type"] == BLOCK_CREATED
        assert body_a["data"]["event_id"] == for_a.event_id
        assert body_a["data"]["explanation"] == ALERT_EXPLANATION
        assert requests["/a"].headers["webhook-id"] == f"{hook_a['id']}_{for_a.event_id}"
        body_b = verified(hook_b["secret"], requests["/b"])
        assert body_b["data"]["event_id"] == for_b.event_id  # not a's, nor b's block.created
        ping_body = verified(hook_a["secret"], receiver.requests[2])
        assert ping_body["type"] == "webhook.test"
        assert receiver.requests[2].headers["webhook-id"] == ping.json()["delivery_id"]

        def delivered_twice() -> bool:
            attempts = ca.get(f"/v1/webhooks/{hook_a['id']}/deliveries").json()["deliveries"]
            return len(attempts) == 2

        wait_until(delivered_twice, 30, "both attempts recorded", 0.1)
        attempts = ca.get(f"/v1/webhooks/{hook_a['id']}/deliveries").json()["deliveries"]
        assert [(x["type"], x["outcome"], x["status"]) for x in attempts] == [
            ("webhook.test", "delivered", 200),
            (BLOCK_CREATED, "delivered", 200),
        ]
        assert attempts[1]["event_id"] == for_a.event_id
        [listed] = ca.get("/v1/webhooks").json()["webhooks"]
        assert listed["health"]["last_status"] == 200
        assert listed["health"]["consecutive_failures"] == 0

        assert ca.delete(f"/v1/webhooks/{hook_a['id']}").status_code == 200

        def audited(action: str) -> list[dict[str, Any]]:
            response = ca.get("/v1/audit", params={"action": action})
            assert response.status_code == 200, response.text
            entries: list[dict[str, Any]] = response.json()["entries"]
            return entries

        wait_until(lambda: len(audited("webhook.deleted")) == 1, 60, "webhook.deleted", 0.2)
        [entry] = audited("webhook.created")
        assert entry["target"] == hook_a["id"]
        assert entry["details"]["host"] == f"127.0.0.1:{receiver.port}"
        assert hook_a["secret"] not in json.dumps(entry)
        assert audited("webhook.deleted")[0]["target"] == hook_a["id"]


def _builtins(event: AlertEvent) -> dict[str, Any]:
    import msgspec

    result: dict[str, Any] = msgspec.to_builtins(event)
    return result
