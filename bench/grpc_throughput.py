"""Envoy's rate limit service over gRPC against ``POST /v1/check``: the same limiter, the
same box, the same run.

Usage::

    python bench/grpc_throughput.py [--duration 10] [--rounds 3] [--connections 64]
                                    [--grpc-connections 8]

It starts a private Redis and one ``python -m ratewatch serve --grpc-port P`` (helpers of
``check_throughput.py``), then drives both protocols with the same load generator,
``h2load`` (Debian's ``nghttp2-client``): HTTP/1.1 for ``/v1/check`` (``--h1``, one request
in flight per connection, ``--connections`` connections), HTTP/2 for ``ShouldRateLimit``
(``--grpc-connections`` connections with as many streams each as make the same number of
requests in flight: a gateway multiplexes its calls on a few connections).  Both ask one
check of the same limit and window per request (``{"key", "limit", "window"}`` against a
descriptor of one entry and its own ``limit``), each after a discarded warm-up, in turns
(each protocol goes first in alternate rounds).

In the same rounds (each of the three first in turn) it drives ``bench/grpc_ceiling.py``,
a grpcio server that answers every call with the same response: the ceiling of grpcio on
this box, against which both the limiter's gRPC rate and the target are read.

Every call to the limiter is verified: h2load counts HTTP statuses only, so the limiter's
``ratewatch_decisions_total`` is read before and after each run, and a run whose decisions
fall short of its completed requests (a gRPC error travels in a 200's trailers) is an
error.  The table shows the medians over the rounds, each round's ratio gRPC / HTTP, the
limiter's RSS with the gRPC server loaded, and the load average.  Exit status 1 only if
the harness failed or calls failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import httpx
from check_throughput import (
    HOST,
    BenchError,
    Processes,
    _raise_interrupt,
    free_port,
    http_ok,
    load_average,
    log,
    measure_rss,
    redis_binary,
    redis_ping,
    spread,
    wait_until,
)

LIMIT = 1_000_000_000
WINDOW = 60
RLS_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
TARGET_RATIO = 0.5
_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
_DECISIONS = re.compile(r"^ratewatch_decisions_total\{[^}]*\} ([\d.e+]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    per_second: float
    done: int
    succeeded: int
    decided: int


def grpc_body() -> bytes:
    """One ``RateLimitRequest`` in gRPC's framing: a flag byte, its length, the message."""
    from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
    from envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest

    descriptor = RateLimitDescriptor(
        entries=[RateLimitDescriptor.Entry(key="client", value="bench:1")],
        limit=RateLimitDescriptor.RateLimitOverride(requests_per_unit=LIMIT, unit=2),
    )
    message = RateLimitRequest(domain="bench", descriptors=[descriptor]).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def decisions(base_url: str) -> int:
    """Decisions the limiter counted (its metrics are flushed every second)."""
    text = httpx.get(base_url + "/metrics", timeout=5).text
    return int(sum(float(value) for value in _DECISIONS.findall(text)))


class GrpcBench:
    def __init__(self, args: argparse.Namespace, work: Path, procs: Processes):
        self.args = args
        self.work = work
        self.procs = procs
        self.token = secrets.token_urlsafe(30)

    def start(self) -> None:
        redis_port = free_port()
        argv = [redis_binary(), "--port", str(redis_port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.work)]
        self.procs.start("redis", argv, dict(os.environ))
        wait_until(
            lambda: redis_ping(redis_port),
            lambda: self.procs.ensure_alive("redis"),
            "redis",
            30,
        )
        self.port, self.grpc_port = free_port(), free_port()
        data_dir = self.work / "ratewatch-data"
        argv = [sys.executable, "-m", "ratewatch", "serve", "--host", HOST]
        argv += ["--port", str(self.port), "--grpc-port", str(self.grpc_port)]
        argv += ["--redis-url", f"redis://{HOST}:{redis_port}", "--data-dir", str(data_dir)]
        env = {**os.environ, "RATEWATCH_BOOTSTRAP_KEY": self.token}
        self.procs.start("ratewatch", argv, env)
        self.base_url = f"http://{HOST}:{self.port}"
        wait_until(
            lambda: http_ok(self.base_url + "/health"),
            lambda: self.procs.ensure_alive("ratewatch"),
            "ratewatch",
            60,
        )
        self.ceiling_port = free_port()
        argv = [sys.executable, str(Path(__file__).parent / "grpc_ceiling.py")]
        argv += ["--host", HOST, "--port", str(self.ceiling_port)]
        self.procs.start("grpc-ceiling", argv, dict(os.environ))
        wait_until(
            lambda: port_open(self.ceiling_port),
            lambda: self.procs.ensure_alive("grpc-ceiling"),
            "grpc-ceiling",
            30,
        )
        (self.work / "check.json").write_text(
            json.dumps({"key": "bench:1", "limit": LIMIT, "window": WINDOW})
        )
        (self.work / "rls.bin").write_bytes(grpc_body())

    def h2load(self, protocol: str, duration: float, warm_up: float) -> Run:
        auth = f"authorization: Bearer {self.token}"
        argv = [
            "h2load",
            "-D",
            f"{duration * 1000:.0f}ms",
            "--warm-up-time",
            f"{warm_up * 1000:.0f}ms",
        ]
        argv += ["-H", auth]
        if protocol == "http":
            argv += ["--h1", "-c", str(self.args.connections), "-m", "1"]
            argv += ["-H", "content-type: application/json", "-d", str(self.work / "check.json")]
            argv.append(self.base_url + "/v1/check")
        else:
            connections = self.args.grpc_connections
            streams = max(1, self.args.connections // connections)
            argv += ["-c", str(connections), "-m", str(streams)]
            argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
            argv += ["-d", str(self.work / "rls.bin")]
            port = self.grpc_port if protocol == "grpc" else self.ceiling_port
            argv.append(f"http://{HOST}:{port}{RLS_PATH}")
        time.sleep(1.2)  # the metrics flush (every second) has counted the previous run
        before = decisions(self.base_url)
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise BenchError(f"h2load failed ({out.returncode}): {out.stderr or out.stdout}")
        finished, requests = _FINISHED.search(out.stdout), _REQUESTS.search(out.stdout)
        if finished is None or requests is None:
            raise BenchError(f"unreadable h2load output:\n{out.stdout}")
        done, succeeded = int(requests.group(2)), int(requests.group(3))
        if protocol == "ceiling":  # decides nothing: its answers are all the same
            return Run(float(finished.group(2)), done, succeeded, succeeded)
        time.sleep(1.2)
        decided = decisions(self.base_url) - before
        return Run(float(finished.group(2)), done, succeeded, decided)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def rss_split(pid: int) -> tuple[float, float]:
    """RssAnon and RssFile of ``pid`` in MB: grpcio's library is file-backed pages, shared
    by the workers of one limiter."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warm-up", type=float, default=2.0, help="discarded seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64, help="requests in flight")
    parser.add_argument("--grpc-connections", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="rw-grpc-bench-"))
    procs = Processes(work)
    runs: dict[str, list[Run]] = {"http": [], "grpc": [], "ceiling": []}
    loads = [load_average()]
    try:
        bench = GrpcBench(args, work, procs)
        bench.start()
        for round_ in range(args.rounds):
            order = list(runs)[round_ % 3 :] + list(runs)[: round_ % 3]  # each first in turn
            for protocol in order:
                log(f"round {round_ + 1}: {protocol}")
                run = bench.h2load(protocol, args.duration, args.warm_up)
                # the warm-up's calls are decided too: at least every counted one must be
                if run.succeeded != run.done or run.decided < run.succeeded:
                    raise BenchError(f"{protocol}: calls failed: {run}")
                runs[protocol].append(run)
            loads.append(load_average())
        rss = measure_rss(procs.pid("ratewatch"))
        split = rss_split(procs.pid("ratewatch"))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    http = [run.per_second for run in runs["http"]]
    grpc = [run.per_second for run in runs["grpc"]]
    ceiling = [run.per_second for run in runs["ceiling"]]
    ratio = [g / h for g, h in zip(grpc, http, strict=True)]
    of_ceiling = [g / c for g, c in zip(grpc, ceiling, strict=True)]
    ceiling_ratio = [c / h for c, h in zip(ceiling, http, strict=True)]
    in_flight = args.connections
    print(f"one limiter process, {args.rounds} rounds of {args.duration:.0f}s, "
          f"{in_flight} requests in flight, load average {' '.join(loads)}")  # fmt: skip
    print("median (min..max) over the rounds")
    print(f"{'HTTP POST /v1/check (checks/s)':34}{spread(http, '.0f')}")
    print(f"{'gRPC ShouldRateLimit (calls/s)':34}{spread(grpc, '.0f')}")
    verdict = "PASS" if median(ratio) >= TARGET_RATIO else "MISS"
    print(f"{'ratio gRPC / HTTP':34}{spread(ratio, '.2f')}   target >= {TARGET_RATIO} {verdict}")
    print(f"{'grpcio ceiling (calls/s)':34}{spread(ceiling, '.0f')}")
    print(f"{'gRPC / grpcio ceiling':34}{spread(of_ceiling, '.2f')}")
    print(f"{'grpcio ceiling / HTTP':34}{spread(ceiling_ratio, '.2f')}")
    print(f"{'limiter RSS with gRPC (MB)':34}{rss.main_mb:.1f} "
          f"(anon {split[0]:.1f}, file {split[1]:.1f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
