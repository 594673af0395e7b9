"""What tracing costs the check path: ``POST /v1/check`` requests/s with tracing off,
OpenTelemetry not installed, tracing disabled, and tracing on, in one run.

Usage::

    python bench/tracing_cost.py [--duration 10] [--warmup 2] [--connections 64] [--rounds 2]

Starts a private ``redis-server``, an OTLP/HTTP sink (a thread of this process that takes
``POST /v1/traces`` and throws it away) and four ``python -m ratewatch serve`` on that
Redis, side by side:

- ``off``: no ``--tracing`` (the baseline);
- ``not installed``: no ``--tracing``, in an interpreter where ``import opentelemetry``
  fails, as without the ``otel`` extra;
- ``disabled``: ``--tracing`` with ``OTEL_SDK_DISABLED=true``;
- ``on, 10% sampled``: ``--tracing`` with ``OTEL_TRACES_SAMPLER=traceidratio`` at 0.1;
- ``on``: ``--tracing``, exporting every span to the sink (the worst case: each request
  carries a sampled ``traceparent``, so each is recorded and exported).

Each is loaded in turn with wrk (1 thread, ``POST /v1/check`` over 1000 keys, each request
with a sampled ``traceparent`` of its own trace; a warm-up run each, then ``--rounds``
alternating measured runs, so load from elsewhere hits all alike). Prints the median
requests/s and the limiter's CPU time per request of each, and their ratios to ``off``.
Everything it started is stopped (SIGTERM, by PID) at the end. Progress goes to stderr;
exit status 1 if the harness failed or a request got an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KEY_SECRET = secrets.token_hex(32)
MARK = "@@WRK "
WRK_SCRIPT = """
local token, reqs, idx = "%s", {}, 0
local function hex(words)
  local out = ""
  for _ = 1, words do out = out .. string.format("%%08x", math.random(0, 0x7fffffff)) end
  return out
end
function init(args)
  for i = 0, 999 do
    -- a trace of its own per request: a ratio sampler samples by trace id
    local headers = {["Content-Type"] = "application/json",
                     ["Authorization"] = "Bearer " .. token,
                     ["traceparent"] = "00-" .. hex(4) .. "-" .. hex(2) .. "-01"}
    local body = string.format('{"key":"bench:%%d","limit":1000000000,"window":60}', i)
    reqs[i + 1] = wrk.format("POST", "/v1/check", headers, body)
  end
  idx = math.random(0, 999)
end
function request()
  idx = idx %% 1000 + 1
  return reqs[idx]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%s{"requests":%%d,"duration_us":%%d,"errors":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(99)))
end
"""
# runs ``ratewatch`` where no opentelemetry module can be imported (the extra not installed)
WITHOUT_OTEL = """
import sys
class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoOpenTelemetry())
from ratewatch.cli import main
sys.argv[0] = "ratewatch"
main()
"""


class BenchError(RuntimeError):
    """The harness could not produce valid numbers."""


def log(message: str) -> None:
    print(f"[tracing-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with {proc.returncode}")
        with contextlib.suppress(OSError, httpx.HTTPError):
            if check():
                return
        time.sleep(0.1)
    raise BenchError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


class Sink:
    """An OTLP/HTTP endpoint that accepts every export and keeps only counts."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                self.rfile.read(size)
                sink.exports += 1
                sink.bytes += size
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"


class Stack:
    """The processes this benchmark started, each stopped by its own PID at the end."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.procs.append(proc)
        log(f"started {name} (pid {proc.pid})")
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def wrk(
    base_url: str, token: str, connections: int, seconds: float, work: Path
) -> tuple[float, int, int]:
    """One wrk run; (requests/s, errors, p99 us)."""
    script = work / "check.lua"
    script.write_text(WRK_SCRIPT % (token, MARK))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
    done = subprocess.run(
        [*argv, "-s", str(script), base_url + "/v1/check"],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            data = json.loads(line[len(MARK) :])
            return data["requests"] / (data["duration_us"] / 1e6), data["errors"], data["p99_us"]
    raise BenchError(f"wrk printed no result: {done.stdout}{done.stderr}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Limiter:
    """One ``ratewatch serve`` process and what was measured on it."""

    def __init__(
        self,
        stack: Stack,
        redis_port: int,
        name: str,
        *,
        tracing: bool = False,
        without_otel: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.token = secrets.token_urlsafe(30)
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(dir=stack.work))
        command = ["-c", WITHOUT_OTEL] if without_otel else ["-m", "ratewatch"]
        argv = [sys.executable, *command, "serve", "--host", HOST, "--port", str(port)]
        argv += ["--redis-url", f"redis://{HOST}:{redis_port}", "--data-dir", str(data_dir)]
        argv += ["--tracing"] if tracing else []
        full_env = {**os.environ, "RATEWATCH_BOOTSTRAP_KEY": self.token, **(env or {})}
        full_env["RATEWATCH_KEY_SECRET"] = KEY_SECRET
        full_env["PYTHONPATH"] = str(REPO)
        self.proc = stack.start(name.replace(" ", "-"), argv, full_env)
        self.base_url = f"http://{HOST}:{port}"
        wait_until(
            lambda: httpx.get(self.base_url + "/health").status_code == 200, self.proc, self.name
        )
        self.rps: list[float] = []
        self.cpu_us: list[float] = []  # limiter CPU time per request
        self.errors = 0
        self.p99_us = 0

    def load(self, args: argparse.Namespace, work: Path, seconds: float, measure: bool) -> None:
        cpu = cpu_seconds(self.proc.pid)
        rps, errors, p99 = wrk(self.base_url, self.token, args.connections, seconds, work)
        used = cpu_seconds(self.proc.pid) - cpu
        if measure:
            self.rps.append(rps)
            self.cpu_us.append(used / (rps * seconds) * 1e6 if rps else 0.0)
            self.errors += errors
            self.p99_us = max(self.p99_us, p99)
            log(f"{self.name}: {rps:,.0f} requests/s, {self.cpu_us[-1]:.1f} CPU-us/request")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="measured runs of each, alternating (noise)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        log("wrk is not on PATH")
        return 1
    work = Path(tempfile.mkdtemp(prefix="ratewatch-tracing-bench-"))
    stack = Stack(work)
    sink = Sink()
    try:
        redis_port = free_port()
        redis = stack.start(
            "redis", ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", ""]
        )
        wait_until(lambda: listening(redis_port), redis, "redis")
        limiters = [
            Limiter(stack, redis_port, "off"),
            Limiter(stack, redis_port, "not installed", without_otel=True),
            Limiter(stack, redis_port, "disabled", tracing=True, env={"OTEL_SDK_DISABLED": "true"}),
            Limiter(
                stack,
                redis_port,
                "on, 10% sampled",
                tracing=True,
                env={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                    # by trace id, whatever the caller's flag says
                    "OTEL_TRACES_SAMPLER": "traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": "0.1",
                },
            ),
            Limiter(
                stack,
                redis_port,
                "on",
                tracing=True,
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint},
            ),
        ]
        load_before = os.getloadavg()
        for limiter in limiters:
            log(f"{limiter.name}: warm-up {args.warmup:g}s")
            limiter.load(args, work, args.warmup, measure=False)
        for _ in range(args.rounds):
            for limiter in limiters:
                limiter.load(args, work, args.duration, measure=True)
        time.sleep(6)  # the last batch of spans (every 5 s by default) reaches the sink
        baseline = limiters[0]
        base_rps = statistics.median(baseline.rps)
        base_cpu = statistics.median(baseline.cpu_us)
        print(f"{'tracing':<16} {'requests/s':>11} {'ratio':>6}  {'CPU-us/req':>10} {'ratio':>6}")
        for limiter in limiters:
            rps, cpu = statistics.median(limiter.rps), statistics.median(limiter.cpu_us)
            print(
                f"{limiter.name:<16} {rps:>11,.0f} {rps / base_rps:>6.3f}  {cpu:>10.1f}"
                f" {base_cpu / cpu:>6.3f}  (p99 {limiter.p99_us} us,"
                f" {len(limiter.rps)} run(s) of {args.duration:g}s)"
            )
        print(f"OTLP sink: {sink.exports} exports, {sink.bytes / 1e6:.1f} MB")
        load_after = os.getloadavg()
        print(
            f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after"
            f" ({os.cpu_count()} CPUs); /proc/loadavg: {Path('/proc/loadavg').read_text().strip()}"
        )
        return 1 if any(limiter.errors for limiter in limiters) else 0
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        stack.stop_all()
        sink.server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
