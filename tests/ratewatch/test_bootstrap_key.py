"""RATEWATCH_BOOTSTRAP_KEY as an operator sets it: a key that is a key, registered once,
and left revoked once revoked (limiter/state/bootstrap.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.credentials import KEY_SECRET, create_key
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter

pytestmark = pytest.mark.timeout(120)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATEWATCH_KEY_SECRET": KEY_SECRET.hex(), **env},
    )


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("admin", "5 characters of key material, at least 32"),
        ("rwk_" + "0123456789abcdef" + "fedcba987654321", "31 characters of key material"),
        ("adminadmin" * 4, "5 different characters"),
        ("a key with spaces in it that is long enough", "printable ASCII"),
        ("k" * 100 + secrets.token_hex(100), "300 characters long, at most 256"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_bootstrap_key_that_is_no_key_is_refused_with_one_line(
    redis_server: RedisServer, tmp_path: Path, command: str, key: str, says: str
) -> None:
    started = run(
        command,
        "--redis-url", redis_server.url,
        "--port", str(free_port()),
        "--data-dir", str(tmp_path / "data"),
        "--key-prefix", "bootref",
        env={"RATEWATCH_BOOTSTRAP_KEY": key},
    )  # fmt: skip
    assert started.returncode != 0
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1, started.stderr
    assert lines[0].startswith("Error: RATEWATCH_BOOTSTRAP_KEY")
    assert says in lines[0]
    assert key not in started.stderr, "the key itself was printed"


def keys_of(base_url: str, api_key: str) -> httpx.Response:
    return httpx.get(
        base_url + "/v1/keys", headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    )


def test_a_key_of_32_characters_of_material_is_registered(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    key = "rwk_" + "0123456789abcdef" + "fedcba9876543210"
    server = start_limiter(
        redis_server.url,
        tmp_path,
        "--key-prefix",
        "boot" + secrets.token_hex(3),
        env={"RATEWATCH_BOOTSTRAP_KEY": key},
    )
    try:
        answer = keys_of(server.base_url, key)
        assert answer.status_code == 200
        assert [(k["tenant"], k["admin"]) for k in answer.json()["keys"]] == [("default", True)]
    finally:
        server.stop()


def test_a_revoked_bootstrap_key_stays_revoked_across_a_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = "boot" + secrets.token_hex(3)
    key = secrets.token_hex(24)
    port = free_port()

    def start(bootstrap_key: str) -> RatewatchProcess:
        return start_limiter(
            redis_server.url,
            tmp_path,
            "--key-prefix",
            prefix,
            port=port,
            env={"RATEWATCH_BOOTSTRAP_KEY": bootstrap_key},
        )

    server = start(key)
    try:
        [record] = keys_of(server.base_url, key).json()["keys"]
        revoked = httpx.delete(
            f"{server.base_url}/v1/keys/{record['id']}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert revoked.status_code == 200
        assert keys_of(server.base_url, key).status_code == 401
    finally:
        server.stop()

    server = start(key)  # the same environment, as a restart has it
    try:
        assert keys_of(server.base_url, key).status_code == 401
        other = create_key(redis_server.url, "default", admin=True, prefix=prefix)
        names = [k["name"] for k in keys_of(server.base_url, other).json()["keys"]]
        assert names == ["test"], "the revoked bootstrap key was registered again"
        assert "RATEWATCH_BOOTSTRAP_KEY was revoked: it stays revoked" in server.log()
    finally:
        server.stop()

    new_key = secrets.token_hex(24)  # another bootstrap key is registered as usual
    server = start(new_key)
    try:
        assert keys_of(server.base_url, new_key).status_code == 200
        assert keys_of(server.base_url, key).status_code == 401
    finally:
        server.stop()
