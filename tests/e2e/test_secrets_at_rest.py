"""Secrets at rest with a real ``ratewatch up``: the data dir and every file in it (Valkey's
and chDB's included) are its owner's alone, the children's command lines hold no URL, a
webhook's secret is nowhere in plain text in Redis or Valkey's append-only file, and the
embedded Valkey on TCP wants a password."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from limiter.embedded import EmbeddedValkey, running_url
from limiter.keyspace import Keyspace
from tests.support.credentials import BOOTSTRAP_KEY, SEALER
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, start_stack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[RatewatchProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, mode=0o755)
    data_dir.chmod(0o755)
    left = data_dir / "left-by-an-older-version"
    left.write_text("x")
    left.chmod(0o644)
    process = start_stack(
        tmp_path, "--batch-max-age", "0.2", env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
        timeout=120,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.stop(timeout=60)


def password_of(url: str) -> str:
    return urlsplit(url).password or ""


def loose(data_dir: Path) -> list[str]:
    """Entries of ``data_dir`` that anyone but their owner may read, write or enter."""
    found = []
    for path in (data_dir, *data_dir.rglob("*")):
        try:
            status = path.lstat()
        except FileNotFoundError:  # a chDB part merged away meanwhile
            continue
        if not stat.S_ISLNK(status.st_mode) and status.st_mode & 0o077:
            found.append(f"{oct(stat.S_IMODE(status.st_mode))} {path.relative_to(data_dir)}")
    return found


def test_the_data_dir_and_the_secrets_stay_private(up: RatewatchProcess) -> None:
    assert up.data_dir is not None
    data_dir = up.data_dir
    url = (data_dir / "valkey" / "url").read_text().strip()
    assert url.startswith("unix://")

    # the children are told the URLs through their environment, not their command line
    pids = [int(f.read_text()) for f in (data_dir / "run").glob("*.pid")]
    assert len(pids) == 2
    for pid in pids:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert url not in command_line
        assert "--redis-url" not in command_line
        assert "--clickhouse-url" not in command_line
        environment = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        assert f"RATEWATCH_REDIS_URL={url}" in environment

    api = httpx.Client(
        base_url=up.base_url, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}, timeout=10
    )
    client = redis.Redis(unix_socket_path=url.removeprefix("unix://"))
    try:
        created = api.post("/v1/webhooks", json={"url": "https://hooks.example.com/x"})
        assert created.status_code == 201, created.text
        hook = created.json()
        raw = client.hget(Keyspace().webhooks("default"), hook["id"])
        assert raw is not None
        assert hook["secret"].encode() not in raw
        stored = json.loads(raw)["secret"]
        assert SEALER.open(stored, "default", hook["id"]) == hook["secret"]

        # the append-only file has the record (fsynced every second), not the secret
        aof = data_dir / "valkey" / "appendonlydir"

        def written() -> bool:
            return any(hook["id"].encode() in f.read_bytes() for f in aof.iterdir())

        wait_until(written, 10, "the webhook in the append-only file", 0.2)
        for f in aof.iterdir():
            assert hook["secret"].encode() not in f.read_bytes()
            assert hook["secret"].removeprefix("whsec_").encode() not in f.read_bytes()
    finally:
        client.close()
        api.close()

    # Valkey's, chDB's and RateWatch's own files, and what was there before the start
    assert (data_dir / "clickhouse").is_dir()
    assert (data_dir / "valkey" / "appendonlydir").is_dir()
    assert loose(data_dir) == []
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_the_embedded_valkey_on_tcp_wants_a_password(tmp_path: Path) -> None:
    # a data dir too long for a Unix socket: Valkey listens on 127.0.0.1
    data_dir = tmp_path / ("d" * 90)
    valkey = EmbeddedValkey(data_dir)
    url = valkey.start()
    try:
        password = password_of(url)
        assert url.startswith("redis://ratewatch:")
        assert len(password) >= 32
        assert running_url(data_dir) == url
        host, _, port = url.rpartition("@")[2].partition(":")
        anonymous = redis.Redis(host=host, port=int(port))
        try:
            assert anonymous.ping()  # what readiness checks need, nothing else
            with pytest.raises(redis.exceptions.NoPermissionError):
                anonymous.set("k", "v")
        finally:
            anonymous.close()
        with redis.Redis.from_url(url) as client:
            client.set("k", "v")
        for name in ("password", "url", "users.acl"):
            assert stat.S_IMODE((data_dir / "valkey" / name).stat().st_mode) == 0o600
        assert password not in (data_dir / "valkey" / "users.acl").read_text()
    finally:
        valkey.stop()
    # the same password after a restart: clients configured with the URL keep working
    again = EmbeddedValkey(data_dir)
    try:
        again.start()
        assert password_of(again.url) == password
    finally:
        again.stop()
