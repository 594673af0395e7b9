"""`ratewatch up --denial-cache-entries`: the checks the limiter's denial cache answers,
without a Redis call and so without the check script that streams each decision, become
analytics rows all the same, each exactly once."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from analytics.query_client import answers, query
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_stack

pytestmark = pytest.mark.timeout(240)

BOOTSTRAP = "denial-cache-counted-key-0123456789abcdef"


@pytest.fixture
def service(redis_server: RedisServer, tmp_path: Path) -> Iterator[RatewatchProcess]:
    process = start_stack(
        tmp_path, "--redis-url", redis_server.url, "--key-prefix", "rwd" + secrets.token_hex(4),
        "--batch-max-age", "0.2", "--denial-cache-entries", "1000",
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP},
    )  # fmt: skip
    yield process
    process.stop(timeout=60)


def rows(socket: Path, where: str) -> int:
    if not answers(socket):
        return -1
    return int(query(socket, f"SELECT count() AS n FROM ratewatch.decisions WHERE {where}")[0]["n"])


def test_every_check_the_cache_answers_is_one_analytics_row(service: RatewatchProcess) -> None:
    assert service.data_dir is not None
    socket = service.data_dir / "clickhouse" / "query.sock"
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    with httpx.Client(base_url=service.base_url, timeout=10, headers=headers) as client:
        reasons = []
        for index in range(40):
            body = {"key": f"over:{index % 2}", "limit": 3, "window": 3600, "route": "/x"}
            response = client.post("/v1/check", json=body)
            assert response.status_code == 200, response.text
            reasons.append(response.json()["reason"])
        batch = [{"key": "over:0", "limit": 3, "window": 3600}] * 5
        results = client.post("/v1/batch", json={"checks": batch}).json()["results"]
        reasons += [result["reason"] for result in results]
        text = client.get("/metrics").text
    found = re.search(r"^ratewatch_denial_cache_hits_total (\S+)$", text, re.MULTILINE)
    assert found
    # per key: 3 allowed, 1 denied by Redis, the rest (16 + the batch's 5) by the cache
    assert float(found.group(1)) == 16 * 2 + 5
    assert (reasons.count("ok"), reasons.count("limit")) == (6, 39)
    where = "tenant = 'default' AND key LIKE 'over:%'"
    wait_until(lambda: rows(socket, where) >= 45, 60, "45 rows", 0.2)
    assert rows(socket, f"{where} AND reason = 'limit' AND NOT allowed") == 39
    assert rows(socket, f"{where} AND allowed") == 6
    assert int(query(socket, f"SELECT uniqExact(event_id) AS n FROM ratewatch.decisions "
                             f"WHERE {where}")[0]["n"]) == 45  # fmt: skip
