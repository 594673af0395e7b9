"""Signed keys from the client's side, against a real `ratewatch serve`: the SDK signs every
request when given the signing secret (sync and async), and `ratewatch keys create
--signed` prints a key and the secret that signs for it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ratewatch import AsyncRateWatch, AuthenticationError, Check, RateWatch, RequestSigner
from tests.support.credentials import KEY_SECRET, create_signed_key
from tests.support.servers import RatewatchProcess, RedisServer


@pytest.fixture
def signed_key(redis_server: RedisServer, tenant: str) -> tuple[str, str]:
    return create_signed_key(redis_server.url, tenant, admin=True)


def test_the_sync_client_signs_when_given_the_secret(
    limiter: RatewatchProcess, signed_key: tuple[str, str]
) -> None:
    api_key, secret = signed_key
    with RateWatch(api_key, limiter.base_url, fail_open=False, signing_secret=secret) as rw:
        first = rw.check("user:1", limit=5, window=60)
        assert (first.allowed, first.remaining) == (True, 4)
        results = rw.batch([Check("user:1", 5, 60), {"key": "user:2", "limit": 5, "window": 60}])
        assert [r.remaining for r in results] == [3, 4]
    with (
        RateWatch(api_key, limiter.base_url, fail_open=False) as unsigned,
        pytest.raises(AuthenticationError) as refused,
    ):
        unsigned.check("user:1", limit=5, window=60)
    assert refused.value.problem["type"] == "urn:ratewatch:problem:signature-missing"
    with (
        RateWatch(api_key, limiter.base_url, fail_open=False, signing_secret="rws_wrong") as wrong,
        pytest.raises(AuthenticationError) as refused,
    ):
        wrong.check("user:1", limit=5, window=60)
    assert refused.value.problem["type"] == "urn:ratewatch:problem:signature-invalid"


async def test_the_async_client_signs_when_given_the_secret(
    limiter: RatewatchProcess, signed_key: tuple[str, str]
) -> None:
    api_key, secret = signed_key
    async with AsyncRateWatch(
        api_key, limiter.base_url, fail_open=False, signing_secret=secret
    ) as rw:
        assert (await rw.check("user:1", limit=5, window=60)).remaining == 4
        results = await rw.batch([Check("user:1", 5, 60), Check("user:2", 5, 60)])
        assert [r.remaining for r in results] == [3, 4]
    async with AsyncRateWatch(api_key, limiter.base_url, fail_open=False) as unsigned:
        with pytest.raises(AuthenticationError):
            await unsigned.check("user:1", limit=5, window=60)


def test_the_secret_can_come_from_the_environment(
    limiter: RatewatchProcess, signed_key: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api_key, secret = signed_key
    monkeypatch.setenv("RATEWATCH_API_KEY", api_key)
    monkeypatch.setenv("RATEWATCH_SIGNING_SECRET", secret)
    with RateWatch(base_url=limiter.base_url, fail_open=False) as rw:
        assert rw.check("user:1", limit=5, window=60).allowed


def test_the_request_signer_signs_control_plane_calls(
    limiter: RatewatchProcess, signed_key: tuple[str, str]
) -> None:
    api_key, secret = signed_key
    with httpx.Client(
        base_url=limiter.base_url,
        headers={"Authorization": f"Bearer {api_key}"},
        auth=RequestSigner(secret),
        timeout=10,
    ) as http:
        block = {"scope": "ip", "value": "203.0.113.50", "ttl": 60}
        assert http.post("/v1/blocks", json=block).status_code == 201
        assert http.get("/v1/blocks", params={"scope": "ip"}).json()["blocks"][0]["value"] == (
            "203.0.113.50"
        )
        created = http.post("/v1/keys", json={"name": "from a signed key"})
        assert created.status_code == 201, created.text


def test_keys_create_signed_prints_the_key_and_its_secret(
    limiter: RatewatchProcess, redis_server: RedisServer, tenant: str, tmp_path: Path
) -> None:
    created = subprocess.run(
        [
            sys.executable, "-m", "ratewatch", "keys", "create", "--tenant", tenant,
            "--signed", "--redis-url", redis_server.url, "--data-dir", str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.split()[-1]  # the key is still the last word
    assert api_key.startswith("rwk_")
    found = re.search(r"^Signing secret: (rws_\S+)$", created.stdout, re.MULTILINE)
    assert found, created.stdout
    secret = found.group(1)
    with RateWatch(api_key, limiter.base_url, fail_open=False, signing_secret=secret) as rw:
        assert rw.check("user:1", limit=5, window=60).remaining == 4
    with (
        RateWatch(api_key, limiter.base_url, fail_open=False) as unsigned,
        pytest.raises(AuthenticationError),
    ):
        unsigned.check("user:1", limit=5, window=60)

    plain = subprocess.run(
        [
            sys.executable, "-m", "ratewatch", "keys", "create", "--tenant", tenant,
            "--redis-url", redis_server.url, "--data-dir", str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "rws_" not in plain.stdout
    with RateWatch(plain.stdout.split()[-1], limiter.base_url, fail_open=False) as rw:
        assert rw.check("user:1", limit=5, window=60).remaining == 3
