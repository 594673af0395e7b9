"""Control-plane state survives the loss of Redis's data: real `ratewatch serve` processes
on a Redis of the test's own, which is killed (no persistence) and started again empty on
the same port, or flushed, while a client keeps sending checks with valid keys."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.credentials import BOOTSTRAP_KEY
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

pytestmark = pytest.mark.timeout(180)

BLOCKED_IP = "203.0.113.9"
LIFTED_IP = "203.0.113.10"


class Traffic:
    """Checks with each of ``keys`` in turn on a thread, counting the answers' statuses."""

    def __init__(self, base_urls: list[str], keys: list[str]):
        self._base_urls = base_urls
        self._keys = keys
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            turn = 0
            while not self._stop.is_set():
                key = self._keys[turn % len(self._keys)]
                url = self._base_urls[turn % len(self._base_urls)]
                turn += 1
                try:
                    answer = client.post(
                        url + "/v1/check",
                        json={"key": f"user-{turn % 7}", "limit": 1_000_000, "window": 60},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    self.statuses[answer.status_code] += 1
                except httpx.HTTPError:
                    self.errors += 1


def _api(base_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=10, headers={"Authorization": f"Bearer {key}"})


def _configure(api: httpx.Client) -> dict[str, Any]:
    """Keys, settings, a webhook, an allowlist entry and blocks, made through the API;
    what the API then shows of them (one key revoked, one block lifted)."""
    keys = [api.post("/v1/keys", json={"name": f"k{n}"}).json() for n in range(3)]
    assert all("key" in key for key in keys), keys
    revoked = api.post("/v1/keys", json={"name": "revoked"}).json()
    assert api.delete(f"/v1/keys/{revoked['id']}").status_code == 200
    settings = api.patch(
        "/v1/settings",
        json={"fail_mode": "open", "detection_mode": "shadow", "max_dynamic_blocks": 7},
    )
    assert settings.status_code == 200, settings.text
    hook = api.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/ratewatch", "description": "ops"},
    )
    assert hook.status_code == 201, hook.text
    allowed = api.post("/v1/allowlist", json={"scope": "ip", "value": "10.0.0.0/8", "note": "lan"})
    assert allowed.status_code == 201, allowed.text
    gone = api.post("/v1/allowlist", json={"scope": "user_id", "value": "u-gone"})
    assert gone.status_code == 201, gone.text
    removed = api.delete("/v1/allowlist", params={"scope": "user_id", "value": "u-gone"})
    assert removed.status_code == 200, removed.text
    block = api.post(
        "/v1/blocks", json={"scope": "ip", "value": BLOCKED_IP, "ttl": 3600, "reason": "abuse"}
    )
    assert block.status_code == 201, block.text
    lifted = api.post("/v1/blocks", json={"scope": "ip", "value": LIFTED_IP, "ttl": 3600})
    assert api.delete(f"/v1/blocks/{lifted.json()['id']}").status_code == 200
    return {
        "keys": [k["key"] for k in keys],
        "revoked": revoked["key"],
        "hook_secret": hook.json()["secret"],
        "view": _view(api),
    }


def _view(api: httpx.Client) -> dict[str, Any]:
    """Everything the API shows of the tenant's control-plane state."""
    hooks = api.get("/v1/webhooks").json()["webhooks"]
    keys = api.get("/v1/keys").json()["keys"]
    return {
        "keys": sorted((k["id"], k["name"], k["admin"]) for k in keys),
        "settings": api.get("/v1/settings").json(),
        "webhooks": [{k: v for k, v in hook.items() if k != "health"} for hook in hooks],
        "allowlist": api.get("/v1/allowlist").json()["entries"],
        "blocks": [(b["id"], b["value"]) for b in api.get("/v1/blocks").json()["blocks"]],
    }


def _view_or_none(api: httpx.Client) -> dict[str, Any] | None:
    try:
        return _view(api)
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def _shows(api: httpx.Client, expected: dict[str, Any]) -> Callable[[], bool]:
    return lambda: _view_or_none(api) == expected


def _check(base_url: str, key: str, **fields: object) -> httpx.Response:
    body = {"key": "probe", "limit": 1_000_000, "window": 60, **fields}
    return httpx.post(
        base_url + "/v1/check", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


@pytest.fixture
def redis_alone(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, without persistence: killed, it comes back empty."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _serve(redis: RedisServer, workdir: Path) -> RatewatchProcess:
    return start_limiter(
        redis.url,
        workdir,
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY, "RATEWATCH_WEBHOOKS_ALLOW_PRIVATE": "1"},
    )


def test_killed_redis_comes_back_with_every_record_and_no_401(
    redis_alone: RedisServer, tmp_path: Path
) -> None:
    limiter = _serve(redis_alone, tmp_path / "serve")
    try:
        with _api(limiter.base_url, BOOTSTRAP_KEY) as api:
            made = _configure(api)
            assert _check(limiter.base_url, made["revoked"]).status_code == 401
            valid = [BOOTSTRAP_KEY, *made["keys"]]
            with Traffic([limiter.base_url], valid) as traffic:
                wait_until(lambda: sum(traffic.statuses.values()) > 50, 20, "checks before")
                redis_alone.kill()
                killed_at = time.monotonic()
                redis_alone.start()  # same port, no data
                wait_until(
                    lambda: _view_or_none(api) == made["view"],
                    15,
                    "every control-plane record back in Redis",
                    0.05,
                )
                restored_in = time.monotonic() - killed_at
                seen = sum(traffic.statuses.values())
                wait_until(lambda: sum(traffic.statuses.values()) > seen + 50, 20, "checks after")
            print(f"records back {restored_in:.2f}s after the kill; answers {traffic.statuses}")
            assert traffic.statuses[401] == 0, traffic.statuses
            assert traffic.statuses[200] > 100, traffic.statuses
            # a revoked key stays revoked, a lifted block stays lifted, a kept one is enforced
            assert _check(limiter.base_url, made["revoked"]).status_code == 401
            denied = _check(limiter.base_url, made["keys"][0], ip=BLOCKED_IP).json()
            assert (denied["allowed"], denied["reason"]) == (False, "blocked"), denied
            assert _check(limiter.base_url, made["keys"][0], ip=LIFTED_IP).json()["allowed"]
    finally:
        limiter.stop()


def test_flushed_redis_is_restored_once_over_by_two_instances(
    redis_alone: RedisServer, tmp_path: Path
) -> None:
    """Two limiters on one Redis and one data dir both notice the loss and both restore:
    the records come back once, as they were, and a key never seen by one instance is
    answered by it meanwhile."""
    first = _serve(redis_alone, tmp_path / "serve")
    second = start_limiter(
        redis_alone.url,
        tmp_path / "serve",
        "--data-dir",
        str(tmp_path / "serve" / "data"),
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
    )
    try:
        with (
            _api(first.base_url, BOOTSTRAP_KEY) as api,
            _api(second.base_url, BOOTSTRAP_KEY) as other,
        ):
            made = _configure(api)
            fresh = api.post("/v1/keys", json={"name": "never-seen"}).json()["key"]
            expected = _view(api)
            with Traffic(
                [first.base_url, second.base_url], [BOOTSTRAP_KEY, *made["keys"]]
            ) as traffic:
                wait_until(lambda: sum(traffic.statuses.values()) > 50, 20, "checks before")
                with redis.Redis.from_url(redis_alone.url) as plain:
                    plain.flushall()
                # an instance that never saw this key answers it from the durable copy
                assert _check(second.base_url, fresh).status_code == 200
                for client in (api, other):
                    wait_until(_shows(client, expected), 15, "every record back, on both")
                seen = sum(traffic.statuses.values())
                wait_until(lambda: sum(traffic.statuses.values()) > seen + 50, 20, "checks after")
            assert traffic.statuses[401] == 0, traffic.statuses
            with redis.Redis.from_url(redis_alone.url) as plain:
                assert plain.hlen("rw:keyids") == len(expected["keys"])
            assert _check(second.base_url, made["revoked"]).status_code == 401
    finally:
        second.stop()
        first.stop()
