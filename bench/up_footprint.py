"""What ``ratewatch up`` costs on a small machine: threads, memory and CPU of each process
under a steady light load, and what its limiter answers beside the pipeline worker.

Usage::

    python bench/up_footprint.py [--rate 200] [--duration 60] [--pipeline-nice 10]
                                 [--pipeline-hold-above 0.4] [--wrk-duration 10] [--no-wrk]

It starts ``ratewatch up`` on a fresh data dir (its own Valkey, chDB, pipeline worker),
waits until the worker answers on its query socket, then:

1. sends ``--rate`` checks a second for ``--duration`` seconds on one connection and
   prints, per process (supervisor, limiter, pipeline worker, Valkey), the CPU it used
   (cores), its threads, RSS (and the private part of it) and nice value, the worker's
   peak thread count, the load average, and the checks' latency;
2. with ``wrk`` on PATH: ``wrk -c64`` against ``up``'s limiter while the worker stores what
   it answers, then against ``ratewatch serve`` alone on a Redis of its own, and prints the
   two rates and their ratio; then ``wrk -c1`` against ``up``: p50 and p99, and what
   Valkey ran for longer than ``--slow-us`` meanwhile (its slow log, by command: a check
   that reaches Valkey waits behind whatever command runs).

Run it with ``--pipeline-nice 0`` to see what the worker's lower priority buys, and with
``--pipeline-hold-above 0`` what holding its inserts while the limiter is busy buys.  This is a
measurement, not a test: it prints numbers and exits 0 unless the harness failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analytics.query_client import answers  # noqa: E402
from limiter.embedded import running_url  # noqa: E402

HOST = "127.0.0.1"
KEY = "bench-up-footprint-key-0123456789abcdef"
TICKS = os.sysconf("SC_CLK_TCK")
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
local n = 0
function request()
  n = n + 1
  local body = '{"key":"wrk:' .. (n %% 1000) .. '","limit":1000000000,"window":60}'
  return wrk.format(nil, nil, nil, body)
end
"""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ratewatch(args: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ratewatch", *args],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ratewatch exited with {process.returncode}")
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base_url} not healthy within {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Sample:
    """CPU seconds, threads, RSS, private RSS (MB) and nice of one process now."""

    def __init__(self, pid: int):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        self.cpu = (int(fields[11]) + int(fields[12])) / TICKS
        self.nice = int(fields[16])
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        self.threads = int(status["Threads"])
        self.rss = int(status["VmRSS"].split()[0]) / 1024
        self.private = int(status["RssAnon"].split()[0]) / 1024


def processes(up: subprocess.Popen[bytes], data_dir: Path) -> dict[str, int]:
    pids = {"up": up.pid}
    for name in ("limiter", "pipeline"):
        pids[name] = int((data_dir / "run" / f"{name}.pid").read_text())
    children = subprocess.run(
        ["pgrep", "-P", str(up.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    for child in map(int, children):
        if child not in pids.values():
            pids["valkey"] = child
    return pids


def steady(base_url: str, rate: float, duration: float) -> list[float]:
    """``rate`` checks a second for ``duration`` seconds; each one's latency."""
    latencies = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        start, i = time.monotonic(), 0
        while time.monotonic() < start + duration:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            response = client.post(
                "/v1/check",
                json={"key": f"user:{i % 500}", "limit": 100, "window": 60, "ip": "10.0.0.1"},
            )
            latencies.append(time.perf_counter() - sent)
            response.raise_for_status()
            i += 1
    return latencies


def wrk(base_url: str, connections: int, duration: float, script: Path) -> tuple[float, str]:
    """Requests a second, and wrk's latency distribution."""
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--latency"),
            *("-s", str(script), base_url + "/v1/check"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed:\n{out}")
    return float(found.group(1)), out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--pipeline-nice", type=int, default=10)
    parser.add_argument("--pipeline-hold-above", type=float, default=None)
    parser.add_argument("--wrk-duration", type=float, default=10)
    parser.add_argument("--no-wrk", action="store_true")
    parser.add_argument("--slow-us", type=int, default=300)
    options = parser.parse_args()
    env = {**os.environ, "RATEWATCH_BOOTSTRAP_KEY": KEY}
    run_wrk = not options.no_wrk and shutil.which("wrk") is not None
    with tempfile.TemporaryDirectory(prefix="up-footprint-") as name:
        work = Path(name)
        script = work / "check.lua"
        script.write_text(WRK_LUA % KEY)
        data_dir = work / "data"
        port = free_port()
        base_url = f"http://{HOST}:{port}"
        hold = []
        if options.pipeline_hold_above is not None:
            hold = ["--pipeline-hold-above", str(options.pipeline_hold_above)]
        up = ratewatch(
            [
                *("up", "--port", str(port), "--data-dir", str(data_dir)),
                *("--pipeline-nice", str(options.pipeline_nice)),
                *hold,
            ],
            work / "up.log",
            env,
        )
        try:
            wait_healthy(base_url, up)
            wait_for_worker(data_dir)
            pids = processes(up, data_dir)
            log(f"up running: {pids}; {options.rate:.0f} checks/s for {options.duration:.0f}s")
            print(
                f"\nsteady {options.rate:.0f} checks/s for {options.duration:.0f}s, "
                f"pipeline nice {options.pipeline_nice}, "
                "hold above " + ("the default" if hold == [] else str(options.pipeline_hold_above))
            )
            measure_steady(base_url, pids, options.rate, options.duration)
            if not run_wrk:
                return 0
            log("wrk -c64 and -c1 against up")
            up_rate, _ = wrk(base_url, 64, options.wrk_duration, script)
            url = running_url(data_dir)
            if url is None:
                raise RuntimeError(f"up's Valkey on {data_dir} does not answer")
            valkey = Redis.from_url(url)
            valkey.config_set("slowlog-log-slower-than", options.slow_us)
            valkey.config_set("slowlog-max-len", 10_000)
            valkey.slowlog_reset()
            _, single = wrk(base_url, 1, options.wrk_duration, script)
            slow = slow_commands(valkey.slowlog_get(10_000))
        except BaseException:
            log_tail = (work / "up.log").read_text(errors="replace").splitlines()[-30:]
            log("ratewatch up's log ends:\n" + "\n".join(log_tail))
            raise
        finally:
            stop(up)
        log("wrk -c64 against serve alone")
        serve_rate = serve_alone(work, env, script, options.wrk_duration)
    print(
        f"\nwrk -c64: up {up_rate:.0f} checks/s, serve alone {serve_rate:.0f} checks/s, "
        f"ratio {up_rate / serve_rate:.2f}"
    )
    distribution = re.search(r"Latency Distribution\n(.*?)\n\s*\d+ requests", single, re.DOTALL)
    print(
        "wrk -c1 against up:", " ".join((distribution.group(1) if distribution else single).split())
    )
    print(f"  Valkey's commands over {options.slow_us} us meanwhile: {slow or 'none'}")
    return 0


def slow_commands(entries: list[dict[str, Any]]) -> str:
    """Valkey's slow log by command: how many, how many over 1 ms, the longest."""
    durations: dict[str, list[int]] = {}
    for entry in entries:
        name = entry["command"].split()[0].decode().upper()
        durations.setdefault(name, []).append(entry["duration"])
    return ", ".join(
        f"{name} {len(us)} ({sum(d > 1000 for d in us)} over 1 ms, longest {max(us) / 1000:.1f} ms)"
        for name, us in sorted(durations.items(), key=lambda item: -max(item[1]))
    )


def wait_for_worker(data_dir: Path, timeout: float = 120) -> None:
    """Until the pipeline worker, which owns chDB, answers on its query socket."""
    deadline = time.monotonic() + timeout
    while not answers(data_dir / "clickhouse" / "query.sock"):
        if time.monotonic() > deadline:
            raise RuntimeError("the pipeline worker never answered on its socket")
        time.sleep(0.2)


def measure_steady(base_url: str, pids: dict[str, int], rate: float, duration: float) -> None:
    """Send the steady load and print what each process used meanwhile."""
    before = {name: Sample(pid) for name, pid in pids.items()}
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], Sample(pids["pipeline"]).threads)

    threading.Thread(target=watch, daemon=True).start()
    latencies = steady(base_url, rate, duration)
    done.set()
    after = {name: Sample(pid) for name, pid in pids.items()}
    print(f"{'process':10} {'cores':>7} {'threads':>8} {'rss MB':>8} {'private':>8} {'nice':>5}")
    total = 0.0
    for name, now in after.items():
        cores = (now.cpu - before[name].cpu) / duration
        total += cores
        print(
            f"{name:10} {cores:7.3f} {now.threads:8d} {now.rss:8.1f} {now.private:8.1f}"
            f" {now.nice:5d}"
        )
    print(f"{'tree':10} {total:7.3f}")
    print(f"pipeline peak threads {peak[0]}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"check latency p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms"
    )


def serve_alone(work: Path, env: dict[str, str], script: Path, duration: float) -> float:
    """``ratewatch serve`` on a Redis of its own, without a decision stream: its rate."""
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            *(shutil.which("redis-server") or "redis-server", "--port", str(redis_port)),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    serve = ratewatch(
        [
            *("serve", "--port", str(port), "--redis-url", f"redis://{HOST}:{redis_port}"),
            *("--data-dir", str(work / "serve")),
        ],
        work / "serve.log",
        env,
    )
    try:
        wait_healthy(f"http://{HOST}:{port}", serve)
        rate, _ = wrk(f"http://{HOST}:{port}", 64, duration, script)
        return rate
    finally:
        stop(serve)
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    sys.exit(main())
