"""`ratewatch up` hands its process over to a lean supervisor: what crosses the exec, the
server it inherits stopped by pid, and the supervisor of a running `up` loads nothing of
the limiter's."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ratewatch.processes.handover import PROGRAM, HeldServer, decode, encode
from ratewatch.processes.supervisor import Child
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, free_port

pytestmark = pytest.mark.timeout(120)

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_the_children_and_the_server_cross_the_exec_unchanged(tmp_path: Path) -> None:
    children = [
        Child("limiter", ["serve", "--port", "1"], pid_file=tmp_path / "l.pid", env={"A": "b"}),
        Child("pipeline", ["pipeline"], nice=10, stop_timeout=5.0),
    ]
    server = HeldServer(1234, (tmp_path / "url", tmp_path / "valkey.conf"), 7.5)

    decoded, held = decode(encode(children, server))

    assert held == server
    assert [(c.name, c.args, c.pid_file, c.env, c.nice, c.stop_timeout) for c in decoded] == [
        ("limiter", ["serve", "--port", "1"], tmp_path / "l.pid", {"A": "b"}, 0, 30.0),
        ("pipeline", ["pipeline"], None, None, 10, 5.0),
    ]
    assert decode(encode([], None)) == ([], None)


def test_a_held_server_is_stopped_by_its_pid_and_its_files_removed(tmp_path: Path) -> None:
    leftover = tmp_path / "url"
    leftover.write_text("unix:///nowhere\n")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        HeldServer(process.pid, (leftover, tmp_path / "never-written"), 10).stop()
        wait_until(lambda: process.poll() is not None, 10, "the server to be gone")
        assert not leftover.exists()
    finally:
        process.kill()


def test_a_held_server_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
            HeldServer(process.pid, stop_timeout=0.3).stop()
            wait_until(lambda: process.poll() is not None, 10, "the server to be killed")
        finally:
            process.kill()


def test_a_running_up_is_supervised_by_a_process_without_the_limiters_libraries(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    service = RatewatchProcess(
        ["up", "--port", str(port), "--data-dir", str(data_dir)], port, log_path=tmp_path / "log"
    ).start()
    try:
        assert httpx.get(service.base_url + "/health", timeout=5).status_code == 200
        process = service.process
        assert process is not None
        pid = process.pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [b"-m", PROGRAM.encode()]
        assert b"--data-dir" in argv  # up's own command line, for ps
        mapped = Path(f"/proc/{pid}/maps").read_text()
        # before the hand-over it held redis-py's parser and OpenTelemetry, and the TLS
        # library; the supervisor needs none of them
        assert "site-packages" not in mapped
        assert "libssl" not in mapped
        assert "_ssl." not in mapped

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert not (data_dir / "valkey" / "url").exists()
        found = subprocess.run(["pgrep", "-f", f"valkey-server.*{data_dir}"], capture_output=True)
        assert found.returncode == 1, found.stdout
    finally:
        service.stop()
