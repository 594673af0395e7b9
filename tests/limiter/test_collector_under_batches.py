"""The garbage collector under batch load, as /metrics shows it (``python_gc_*``): a batch
keeps thousands of tuples alive until it is answered, and the limiter's collector, at its
raised threshold (``control.app.GC_GEN0_THRESHOLD``), does not run once every few batches
as CPython's default would make it.  The session's limiter."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.servers import RatewatchProcess

pytestmark = pytest.mark.timeout(120)

BATCHES = 400  # of 100 checks, 8 in flight: at CPython's default threshold, 50-odd collections


def collections(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    found = re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.M)
    assert found, "python_gc_collections_total not in /metrics"
    return {generation: float(value) for generation, value in found}


def test_batches_of_checks_hardly_wake_the_collector(
    limiter: RatewatchProcess, api: httpx.Client
) -> None:
    before = collections(api)
    assert set(before) == {"0", "1", "2"}

    def batch(index: int) -> None:
        checks = [{"key": f"gc:{index}:{i}", "limit": 10, "window": 60} for i in range(100)]
        response = api.post("/v1/batch", json={"checks": checks})
        assert response.status_code == 200, response.text
        assert all(result["allowed"] for result in response.json()["results"])

    with ThreadPoolExecutor(8) as pool:  # a few in flight together, as under load
        list(pool.map(batch, range(BATCHES)))
    after = collections(api)
    runs = after["0"] - before["0"]
    assert runs <= 10, f"the collector ran {runs:.0f} times for {BATCHES} batches"
