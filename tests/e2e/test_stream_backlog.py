"""The bound of `ratewatch up`'s decision stream: while the pipeline worker is stopped the
stream keeps every answered decision, and past --backlog-max-mb the limiter reports it
behind (/health/detailed degraded, /metrics); once the worker runs again it catches up in
full batches and every decision is counted once."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from analytics.clickhouse import query_socket_path
from analytics.query_client import answers, query
from tests.support.polling import wait_until
from tests.support.processes import child_pid
from tests.support.servers import RatewatchProcess, free_port

pytestmark = pytest.mark.timeout(300)

BOOTSTRAP = "stream-backlog-test-key-0123456789abcdef"
PIPELINE_GROUP = "ratewatch-pipeline"


def batch(n: int, round_: int) -> list[dict[str, Any]]:
    return [
        {
            "key": f"user:{round_}:{i}",
            "limit": 100,
            "window": 60,
            "ip": f"198.51.100.{i % 250}",
            "route": "/api/orders",
            "user_agent": "backlog-test/1.0",
            "user_id": f"u{i % 40}",
        }
        for i in range(n)
    ]


def stored(socket: Path, what: str = "count()") -> int:
    if not answers(socket):
        return -1
    return int(query(socket, f"SELECT {what} AS n FROM ratewatch.decisions")[0]["n"])


def batches_written(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    found = re.search(r"^ratewatch_stream_batches_total (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def test_a_stopped_worker_is_reported_behind_and_every_decision_counted_after(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    port, metrics_port = free_port(), free_port()
    service = RatewatchProcess(
        [
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--backlog-max-mb",
            "1",
            "--metrics-port",
            str(metrics_port),
        ],
        port,
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP},
        log_path=tmp_path / "up.log",
    ).start(timeout=90)
    socket = query_socket_path(data_dir / "clickhouse")
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    api = httpx.Client(
        base_url=service.base_url, timeout=30, headers={"Authorization": f"Bearer {BOOTSTRAP}"}
    )
    try:

        def backlog() -> dict[str, Any]:
            stream: dict[str, Any] = api.get("/health/detailed").json()["dependencies"][
                "decision_stream"
            ]
            return stream

        # the worker reads the stream once its group exists
        wait_until(
            lambda: PIPELINE_GROUP in backlog().get("groups", {}) and answers(socket),
            90,
            "the pipeline worker's consumer group and query socket",
            0.2,
        )
        assert backlog()["status"] == "up"
        before = batches_written(worker_metrics)
        worker = child_pid(data_dir, "pipeline")
        os.kill(worker, signal.SIGSTOP)
        try:
            reasons: list[str] = []
            for round_ in range(120):  # about 1.5 MB of decisions in the stream
                response = api.post("/v1/batch", json={"checks": batch(100, round_)})
                assert response.status_code == 200
                reasons += [result["reason"] for result in response.json()["results"]]
            for i in range(50):  # one entry each
                response = api.post(
                    "/v1/check", json={"key": f"single:{i}", "limit": 5, "window": 60}
                )
                assert response.status_code == 200
                reasons.append(response.json()["reason"])
            # what Valkey decided is in the stream; a call it did not answer within the
            # limiter's timeout (on a loaded box) was decided by the failure policy instead,
            # and its decisions reach the stream through the outage spool: all are counted
            answered = len(reasons)

            # nothing was refused or dropped: the stream holds it all, past its bound
            health = api.get("/health/detailed").json()
            assert health["status"] == "degraded"
            stream = health["dependencies"]["decision_stream"]
            assert stream["status"] == "behind"
            assert stream["max_bytes"] == 1 << 20
            assert stream["memory_bytes"] > stream["max_bytes"]
            assert stream["groups"][PIPELINE_GROUP]["unacknowledged"] >= 120
            assert stream["unacknowledged"] >= stream["groups"][PIPELINE_GROUP]["unacknowledged"]
            assert stream["oldest_unacknowledged_age_seconds"] is not None
            metrics = api.get("/metrics").text
            assert re.search(
                r'^ratewatch_decision_stream_unacknowledged_entries\{group="ratewatch-pipeline"\} '
                r"([1-9]\d*)\.0$",
                metrics,
                re.MULTILINE,
            ), metrics
            assert re.search(
                r"^ratewatch_decision_stream_max_bytes 1\.048576e\+06$", metrics, re.MULTILINE
            )
        finally:
            os.kill(worker, signal.SIGCONT)

        wait_until(lambda: stored(socket) >= answered, 120, f"{answered} rows", 0.2)
        assert stored(socket) == answered
        assert stored(socket, "uniqExact(event_id)") == answered
        # the backlog went in whole batches, not one per entry
        assert batches_written(worker_metrics) - before <= 3
        # acknowledged, the stream is trimmed back within its bound
        wait_until(lambda: backlog()["status"] == "up", 60, "the stream back within its bound")
        assert api.get("/health/detailed").json()["status"] == "ok"
        assert backlog()["unacknowledged"] == 0
    finally:
        api.close()
        service.stop(timeout=60)
