"""`ratewatch serve --workers 2`: one port, two processes, one set of limits and metrics."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.servers import RedisServer, start_limiter

pytestmark = pytest.mark.timeout(120)


def decisions_total(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=5).text
    return sum(
        float(value)
        for value in re.findall(r"^ratewatch_decisions_total\{.*\} (\S+)$", text, re.MULTILINE)
    )


def test_workers_share_limits_and_metrics_and_stop_together(
    redis_server: RedisServer, admin_key: str, tmp_path: Path
) -> None:
    service = start_limiter(redis_server.url, tmp_path, "--workers", "2")
    assert service.process is not None
    parent = service.process.pid
    try:
        workers = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        assert len(workers.stdout.split()) == 2

        def one(_: int) -> str:
            with httpx.Client(
                base_url=service.base_url,
                timeout=10,
                headers={"Authorization": f"Bearer {admin_key}"},
            ) as api:
                answer = api.post("/v1/check", json={"key": "w", "limit": 40, "window": 600})
                return str(answer.json()["reason"])

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            reasons = list(pool.map(one, range(200)))
        # Redis admits exactly the limit across both workers; on a starved box a call may
        # outlive the Redis timeout and be answered by the failure policy instead (fail open,
        # never counted by Redis: the script refuses a call past its deadline)
        assert reasons.count("ok") == 40, reasons
        assert set(reasons) <= {"ok", "limit", "fail_open"}
        # whichever worker answers /metrics, it reports every worker's decisions
        assert {decisions_total(service.base_url) for _ in range(6)} == {200.0}
    finally:
        assert service.stop(signal.SIGTERM) == 0
    leftovers = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    assert leftovers.stdout.split() == []
    assert not list((tmp_path / "run").glob("metrics-*"))
