"""`ratewatch up` passes the batch bounds on to its pipeline worker, which holds a trickle of
decisions until the age bound and writes it as one batch: one recorded cut, one insert."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from analytics.query_client import answers, query
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, free_port

pytestmark = pytest.mark.timeout(180)

BOOTSTRAP = "pipeline-batches-test-key-0123456789"


def test_up_passes_the_bounds_on_and_a_trickle_is_one_batch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    service = RatewatchProcess(
        ["up", "--port", str(port), "--data-dir", str(data_dir), "--batch-max-decisions", "500"],
        port,
        env={
            "RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP,
            "RATEWATCH_BATCH_MAX_AGE": "1.5",
            "RATEWATCH_BATCH_MIN_DECISIONS": "700",
        },
        log_path=tmp_path / "up.log",
    ).start(timeout=90)
    socket = data_dir / "clickhouse" / "query.sock"
    try:
        wait_until(lambda: answers(socket), 60, "the pipeline's query socket", 0.2)
        worker = int((data_dir / "run" / "pipeline.pid").read_text())
        argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
        assert b"--batch-max-decisions" in argv
        assert argv[argv.index(b"--batch-max-decisions") + 1] == b"500"
        assert argv[argv.index(b"--batch-max-age") + 1] == b"1.5"
        assert argv[argv.index(b"--batch-min-decisions") + 1] == b"700"
        assert argv[argv.index(b"--batch-min-age") + 1] == b"1.0"

        def rows() -> int:
            return int(query(socket, "SELECT count() AS n FROM ratewatch.decisions")[0]["n"])

        headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
        with httpx.Client(base_url=service.base_url, timeout=10, headers=headers) as api:
            started = time.monotonic()
            checks = [{"key": f"b{i}", "limit": 10, "window": 60} for i in range(5)]
            assert api.post("/v1/batch", json={"checks": checks}).status_code == 200
            for i in range(3):  # entries of their own, read one by one
                check = {"key": f"c{i}", "limit": 10, "window": 60}
                assert api.post("/v1/check", json=check).status_code == 200
            sent = time.monotonic() - started
        wait_until(lambda: rows() == 8, 30, "the trickle's 8 rows", 0.1)
        if sent < 1.0:  # all four entries were read within the age bound of the first
            cuts = query(socket, "SELECT count() AS n FROM ratewatch.consumer_batches")
            assert int(cuts[0]["n"]) == 1
    finally:
        assert service.stop(timeout=60) == 0
