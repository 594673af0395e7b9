"""The limiter on a real three-shard Redis Cluster: tenants spread over the shards."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.credentials import KEY_SECRET
from tests.support.polling import wait_until
from tests.support.servers import free_port, redis_binary, start_limiter

pytestmark = pytest.mark.timeout(120)
SLOTS = [(0, 5460), (5461, 10922), (10923, 16383)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    workdir = tmp_path_factory.mktemp("cluster")
    ports = [free_port() for _ in SLOTS]
    bus_ports = [free_port() for _ in SLOTS]  # the default (port + 10000) may be taken
    processes = [
        subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-port",
                str(bus_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port, bus_port in zip(ports, bus_ports, strict=True)
    ]
    try:
        clients = [redis.Redis(port=port) for port in ports]
        for client in clients:
            wait_until(lambda c=client: _pings(c), 15, "a cluster node")
        for client, (first, last) in zip(clients, SLOTS, strict=True):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port, bus_port in zip(ports[1:], bus_ports[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus_port)
        for client in clients:
            wait_until(
                lambda c=client: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"),
                30,
                "the cluster to be ready",
            )
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def make_key(url: str, data_dir: Path, tenant: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ratewatch",
            "keys",
            "create",
            "--tenant",
            tenant,
            "--admin",
            "--redis-url",
            url,
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


def test_checks_blocks_and_keys_work_on_a_cluster(cluster: list[int], tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{cluster[0]}"
    service = start_limiter(url, tmp_path)
    try:
        tenants = [f"c{secrets.token_hex(4)}" for _ in range(6)]
        api_keys = [make_key(url, tmp_path, tenant) for tenant in tenants]

        def hammer(api_key: str) -> int:
            with httpx.Client(
                base_url=service.base_url,
                timeout=10,
                headers={"Authorization": f"Bearer {api_key}"},
            ) as api:
                return sum(
                    api.post("/v1/check", json={"key": "shared", "limit": 25, "window": 60}).json()[
                        "allowed"
                    ]
                    for _ in range(40)
                )

        # concurrent tenants: the server's coalesced batches mix tenants of different shards
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(hammer, api_keys)) == [25] * 6
        for api_key in api_keys:
            with httpx.Client(
                base_url=service.base_url,
                timeout=10,
                headers={"Authorization": f"Bearer {api_key}"},
            ) as api:
                checks = [{"key": f"user:{i % 2}", "limit": 3, "window": 60} for i in range(8)]
                results = api.post("/v1/batch", json={"checks": checks}).json()["results"]
                assert [r["allowed"] for r in results] == [True] * 6 + [False] * 2
                block = api.post(
                    "/v1/blocks", json={"scope": "ip", "value": "192.0.2.1", "ttl": 60}
                ).json()
                body = api.post(
                    "/v1/check", json={"key": "x", "limit": 5, "window": 60, "ip": "192.0.2.1"}
                ).json()
                assert body["reason"] == "blocked"
                assert api.delete(f"/v1/blocks/{block['id']}").status_code == 200
                new = api.post("/v1/keys", json={"name": "rotating"}).json()
                assert api.delete(f"/v1/keys/{new['id']}").status_code == 200
        # the tenants' counters really are spread over more than one shard
        shards_used = sum(
            1 for port in cluster if redis.Redis(port=port).execute_command("DBSIZE") > 0
        )
        assert shards_used >= 2
    finally:
        service.stop()
