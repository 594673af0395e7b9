"""What ``ratewatch up`` costs on one machine: CPU, memory and analytics lag at steady load.

Usage::

    python bench/pipeline_cost.py [--seconds 40] [--rates 0,200,2000] [--rounds 1]
        [--warmup 5] [--lag-seconds 10] [--connections 8] [--redis-server]
        [--up-arg=--pipeline-nice=0 ...] [--keep] [--json]

Starts ``ratewatch up`` on a free port with a temporary data dir and its embedded Valkey
(with ``--redis-server``: a private ``redis-server`` started here, no persistence, given
as ``--redis-url``), creates one API key for each of three tenants with ``ratewatch keys
create``, sends a few seconds of traffic to settle the tree, then runs one phase per rate:

1. warm-up: ``--warmup`` seconds at the phase's rate (idle: nothing), not measured;
2. cost window: ``--seconds`` more, and nothing else asked of the tree.  CPU cores of every
   process of the tree (utime + stime, plus those of reaped children, from
   ``/proc/<pid>/stat`` at both ends, over the wall time), by role: supervisor, valkey,
   limiter, pipeline (from the pid files in ``<data-dir>/run`` and the server's name),
   and the pipeline worker's by thread name; VmRSS and threads at the end, the RSS split
   into anonymous memory (RssAnon: heaps, caches, what the process allocated) and
   file-backed pages (RssFile: mostly the code of the shared libraries it ran, such as
   chDB's 550 MB library, clean pages the kernel drops under memory pressure and reads
   back when they run again), and Pss (``smaps_rollup``: shared pages divided among the
   processes sharing them); the tree's RSS peak, sampled every second; any process started
   in the window (a restarted child);
3. lag window: ``--lag-seconds`` more of the same traffic while ``count()`` of the
   phase's decisions is polled every 100 ms through the pipeline worker's query socket.
   The worker writes the stream in order, so the n-th answered decision is in analytics
   once ``count()`` reaches n: a decision's lag is the end of the first poll that counted
   it minus the moment its answer arrived (an upper bound, 100 ms resolution).  The polls
   cost the worker CPU, which is why the cost window has none; the tree's cores in this
   window are printed too;
4. drain: the traffic stops; the time from the last answer until ``count()`` equals the
   number of decisions answered in the whole phase (warm-up included).

The traffic is ordinary: ``POST /v1/batch`` requests of 10 to 50 checks on one schedule
that holds the rate (sent by ``--connections`` threads with a keep-alive connection each,
so that a slow answer on a busy box does not hold the rate back), over three tenants
(6:3:1), each with 2,000 clients (a client keeps its key, one of 500 addresses, a user id
for 70 % of them, and a user agent), eight routes and three algorithms.  No client stands
out and none reaches its limit, so detection has nothing to block: this is the cost of the
steady state (a client much busier than the rest is an outlier the detector may block,
which adds blocks, audit entries and alerts to the work measured).  Checks the limiter
answers by its fail mode (Redis did not answer in time) never reach the stream: they are
counted apart.  Each phase's keys start with a tag of their own
(``r<round>p<phase>-<rate>:``), which is how its decisions are counted.

Targets: idle <= 0.02 cores, 200 checks/s <= 0.10, 2,000 checks/s <= 0.50; tree RSS
<= 512 MB; lag p99 <= 2 s at 2,000 checks/s and more.  (Below 1,000 decisions a second, a
batch is inserted once it is ``--batch-max-age`` old, 5 s by default: a slower phase's lag
is about that age and is printed without a target.)  With ``--rounds N`` every phase runs N
times on the same tree and the medians are reported (and each round's tree cores).  The
box's load average is printed beside the results: other work on a shared box moves every
number here.  Progress goes to stderr, results to stdout (``--json``: one JSON document);
``--keep`` leaves the data dir and the logs.  The exit status is 0 unless the harness
failed or requests failed (the numbers are then invalid).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import resource
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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analytics.clickhouse import DECISIONS_TABLE, query_socket_path  # noqa: E402
from analytics.errors import AnalyticsError  # noqa: E402
from analytics.query_client import answers, query  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# "fitting": the pipeline worker's model-fitting child, while it runs (its CPU moves to
# the worker's once reaped)
ROLES = ("supervisor", "valkey", "limiter", "pipeline", "fitting", "other")
# the child's module: detectors' own, or the services' wrapper of it
FITTING_MODULES = (b"detectors.fit_child", b"ratewatch.processes.fitting")
SERVER_NAMES = ("valkey-server", "redis-server")

TARGET_CORES = {0: 0.02, 200: 0.10, 2000: 0.50}
TARGET_RSS_MB = 512.0
TARGET_LAG_P99_S = 2.0
TARGET_LAG_FROM_RATE = 2000  # the lag target is for this rate and above

TENANTS = (("shop", 6), ("media", 3), ("games", 1))
KEYS_PER_TENANT = 2000
IPS_PER_TENANT = 500
LIMIT, WINDOW = 1000, 60
BATCH_MIN, BATCH_MAX = 10, 50
ALGORITHMS = ("sliding_window", "token_bucket", "fixed_window")
ROUTES = (
    "/api/orders",
    "/api/orders/{id}",
    "/api/search",
    "/api/cart",
    "/login",
    "/api/profile",
    "/api/feed",
    "/api/upload",
)
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
)
# answered without Redis: such decisions never reach the stream
UNSTORED_REASONS = ("fail_open", "fail_closed")
POLL_INTERVAL = 0.1
SAMPLE_INTERVAL = 1.0
TOP_THREADS = 6
MAX_BEHIND_S = 1.0


class BenchError(RuntimeError):
    """The harness could not produce valid numbers."""


def log(message: str) -> None:
    """Progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    """The box's 1-minute load average."""
    return os.getloadavg()[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------
# The process tree, from /proc


@dataclass(frozen=True)
class ProcStat:
    """What /proc says about one process."""

    ppid: int
    started: int  # clock ticks after boot: tells a reused pid apart
    cpu_ticks: int  # utime + stime + cutime + cstime
    name: str


def read_stat_text(path: str) -> tuple[str, list[str]] | None:
    """The name and the fields after it of a ``stat`` file (fields[0] is field 3 of
    proc(5))."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def read_stat(pid: int) -> ProcStat | None:
    stat = read_stat_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    name, fields = stat
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ProcStat(ppid=int(fields[1]), started=int(fields[19]), cpu_ticks=cpu, name=name)


@dataclass(frozen=True)
class Memory:
    """What a process holds in memory, in kB: resident (VmRSS), of which anonymous
    (RssAnon: its heaps, ours to reduce) and file-backed (RssFile: mostly the pages of
    shared libraries it ran, clean, which the kernel drops under pressure and reads back
    when they run again); and its proportional share (Pss, from ``smaps_rollup``: a page
    shared with N processes counts 1/N), 0 when not read."""

    rss: int = 0
    anon: int = 0
    file: int = 0
    pss: int = 0


def read_status(pid: int, with_pss: bool = False) -> tuple[Memory, int]:
    """The memory of ``pid`` and its number of threads (zeros if the process is gone);
    ``with_pss`` reads Pss too (which walks the process's page tables)."""
    values = {"VmRSS:": 0, "RssAnon:": 0, "RssFile:": 0, "Threads:": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = line.split(maxsplit=1)[0] if line else ""
            if name in values:
                values[name] = int(line.split()[1])
    pss = 0
    if with_pss:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    memory = Memory(values["VmRSS:"], values["RssAnon:"], values["RssFile:"], pss)
    return memory, values["Threads:"]


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """utime + stime of each thread of ``pid``, with its name (``polars-1``: ``polars``)."""
    found: dict[int, tuple[str, int]] = {}
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            stat = read_stat_text(f"/proc/{pid}/task/{task.name}/stat")
            if stat is not None:
                name, fields = stat
                found[int(task.name)] = (
                    re.sub(r"[-_ ]?\d+$", "", name) or name,
                    int(fields[11]) + int(fields[12]),
                )
    return found


def all_processes() -> dict[int, ProcStat]:
    found: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Member:
    role: str
    stat: ProcStat
    memory: Memory
    threads: int

    @property
    def rss_kb(self) -> int:
        return self.memory.rss


@dataclass(frozen=True)
class Snapshot:
    at: float
    members: dict[int, Member]
    # the pipeline worker's threads: tid -> (name without its number, utime + stime)
    pipeline_threads: dict[int, tuple[str, int]] = field(default_factory=dict)

    def by_role(self, value: Callable[[Member], float]) -> dict[str, float]:
        totals = dict.fromkeys(ROLES, 0.0)
        for member in self.members.values():
            totals[member.role] += value(member)
        totals["tree"] = sum(totals[role] for role in ROLES)
        return totals


class Tree:
    """The processes of ``ratewatch up`` (and a private Redis, counted as valkey)."""

    def __init__(self, root: int, run_dir: Path, private_redis: int | None) -> None:
        self.root = root
        self.run_dir = run_dir
        self.private_redis = private_redis

    def snapshot(self, with_memory: bool = True, with_pss: bool = False) -> Snapshot:
        at = time.monotonic()
        procs = all_processes()
        named = {self.root: "supervisor"}
        for role in ("limiter", "pipeline"):
            pid = read_pid(self.run_dir / f"{role}.pid")
            if pid is not None:
                named[pid] = role
        roots = [self.root] + ([self.private_redis] if self.private_redis else [])
        members: dict[int, Member] = {}
        for pid in descendants(procs, roots):
            stat = procs[pid]
            if stat.name in SERVER_NAMES:
                role = "valkey"
            elif fitting(pid):
                role = "fitting"
            else:
                role = role_of(pid, procs, named)
            memory, threads = read_status(pid, with_pss) if with_memory else (Memory(), 0)
            members[pid] = Member(role, stat, memory, threads)
        pipeline = next((pid for pid, role in named.items() if role == "pipeline"), None)
        by_thread = thread_ticks(pipeline) if pipeline in members else {}
        return Snapshot(at, members, by_thread)

    def pids(self) -> dict[int, int]:
        """Every process of the tree now, with its start time."""
        return {pid: m.stat.started for pid, m in self.snapshot(with_memory=False).members.items()}


def descendants(procs: dict[int, ProcStat], roots: Sequence[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, stat in procs.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, stack = [], [r for r in roots if r in procs]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def fitting(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(module in command for module in FITTING_MODULES)


def role_of(pid: int, procs: dict[int, ProcStat], named: dict[int, str]) -> str:
    """The role of the nearest named ancestor (a limiter worker is the limiter's)."""
    while pid in procs:
        if pid in named:
            return named[pid]
        pid = procs[pid].ppid
    return "other"


def born(start: Snapshot, end: Snapshot) -> dict[str, float]:
    """Processes started between two snapshots, by role: the supervisor restarted a child."""
    counts = dict.fromkeys(ROLES, 0.0)
    for pid, member in end.members.items():
        before = start.members.get(pid)
        if before is None or before.stat.started != member.stat.started:
            counts[member.role] += 1
    return counts


def cores(start: Snapshot, end: Snapshot) -> dict[str, float]:
    """CPU cores used between two snapshots, by role and for the tree."""
    wall = end.at - start.at
    ticks = dict.fromkeys(ROLES, 0)
    for pid, member in end.members.items():
        before = start.members.get(pid)
        # a process born in the window (a restarted child) counts from zero
        if before is None or before.stat.started != member.stat.started:
            ticks[member.role] += member.stat.cpu_ticks
        else:
            ticks[member.role] += member.stat.cpu_ticks - before.stat.cpu_ticks
    used = {role: n / CLK_TCK / wall for role, n in ticks.items()}
    used["tree"] = sum(used[role] for role in ROLES)
    return used


def thread_cores(start: Snapshot, end: Snapshot, process_cores: float) -> dict[str, float]:
    """The pipeline worker's cores by thread name, the busiest few; and under "ended" what
    threads that ended and children reaped in the window used (the process's cores less
    its threads')."""
    ticks: Counter[str] = Counter()
    for tid, (name, now) in end.pipeline_threads.items():
        before = start.pipeline_threads.get(tid)
        ticks[name] += now - (before[1] if before is not None else 0)
    wall = end.at - start.at
    used = {name: n / CLK_TCK / wall for name, n in ticks.most_common(TOP_THREADS) if n > 0}
    ended = process_cores - sum(ticks.values()) / CLK_TCK / wall
    if ended >= 1 / CLK_TCK / wall:  # more than a tick
        used["ended"] = ended
    return used


class RssSampler:
    """The tree's RSS every second, in a thread, for its peak."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_mb = 0.0

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            tree_kb = self._tree.snapshot().by_role(lambda m: m.rss_kb)["tree"]
            self.peak_mb = max(self.peak_mb, tree_kb / 1024)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------
# Traffic


@dataclass(frozen=True)
class Tenant:
    name: str
    api_key: str
    weight: int


@dataclass
class Tally:
    """What one phase's requests got back."""

    answered: int = 0  # decisions that reach the stream
    requests: int = 0
    failed: int = 0  # requests without a 200
    reasons: Counter[str] = field(default_factory=Counter)
    behind_s: float = 0.0  # schedule time given up when the server fell behind

    def checks(self) -> int:
        """Checks answered, whatever the answer."""
        return sum(self.reasons.values())


class Traffic:
    """Paced ``POST /v1/batch`` requests: one schedule, a few sender threads, each with its
    own keep-alive connection (so that one slow answer does not hold the rate back)."""

    def __init__(self, port: int, tenants: Sequence[Tenant], connections: int) -> None:
        self._port = port
        self._tenants = list(tenants)
        self._weights = [t.weight for t in tenants]
        self._rng = random.Random(1)
        self._conns: list[http.client.HTTPConnection | None] = [None] * connections
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_at = 0.0
        self._last = 0.0
        self._tag = ""
        self.tally = Tally()

    def start_phase(self, tag: str) -> None:
        """Keys from now on start with ``tag``; the schedule and the tally start over, on
        fresh connections (the server closes idle ones)."""
        self.close()
        self._tag = tag
        self._next_at = time.monotonic()
        self.tally = Tally()

    def run(
        self, rate: float, until: float, answers: list[tuple[float, int]] | None = None
    ) -> float:
        """Send at ``rate`` checks/s until the monotonic time ``until``; append (when the
        answer came, decisions in it) to ``answers``; when the last answer came."""
        threads = [
            threading.Thread(target=self._sender, args=(i, rate, until, answers), daemon=True)
            for i in range(len(self._conns))
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()
            self._stop.clear()
        return self._last

    def _sender(
        self, index: int, rate: float, until: float, answers: list[tuple[float, int]] | None
    ) -> None:
        while (slot := self._next_slot(rate, until)) is not None:
            at, api_key, body = slot
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            stored = self._send(index, api_key, body)
            with self._lock:
                self._last = time.monotonic()
                if answers is not None and stored:
                    answers.append((self._last, stored))

    def _next_slot(self, rate: float, until: float) -> tuple[float, str, bytes] | None:
        with self._lock:
            if self._stop.is_set() or self._next_at >= until:
                return None
            late = time.monotonic() - self._next_at
            if late > MAX_BEHIND_S:  # do not make up a stall with a burst
                self.tally.behind_s += late
                self._next_at += late
            size = self._rng.randint(BATCH_MIN, BATCH_MAX)
            at, self._next_at = self._next_at, self._next_at + size / rate
            tenant = self._rng.choices(self._tenants, self._weights)[0]
            checks = [self._check(tenant) for _ in range(size)]
        return at, tenant.api_key, json.dumps({"checks": checks}).encode()

    def _send(self, index: int, api_key: str, body: bytes) -> int:
        """POST one batch; the number of its decisions that reach the stream."""
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            conn = self._conns[index]
            if conn is None:
                conn = self._conns[index] = http.client.HTTPConnection(HOST, self._port, timeout=30)
            try:
                conn.request("POST", "/v1/batch", body, headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._conns[index] = None
                if attempt == 2:  # the first may have met a connection the server closed
                    log(f"request failed: {exc!r}")
                    with self._lock:
                        self.tally.requests += 1
                        self.tally.failed += 1
                    return 0
        reasons = (
            [r["reason"] for r in json.loads(data)["results"]] if response.status == 200 else []
        )
        stored = sum(1 for reason in reasons if reason not in UNSTORED_REASONS)
        with self._lock:
            self.tally.requests += 1
            if response.status != 200:
                self.tally.failed += 1
                if self.tally.failed <= 3:
                    log(f"/v1/batch -> {response.status}: {data[:300]!r}")
            self.tally.reasons.update(reasons)
            self.tally.answered += stored
        return stored

    def _check(self, tenant: Tenant) -> dict[str, Any]:
        """A check of one of the tenant's clients: a client keeps its key, address, user id
        and user agent (four clients to an address, 70 % of them signed in)."""
        t, n = self._tenants.index(tenant), self._rng.randrange(KEYS_PER_TENANT)
        ip = n % IPS_PER_TENANT
        check: dict[str, Any] = {
            "key": f"{self._tag}:user:{n}",
            "limit": LIMIT,
            "window": WINDOW,
            "algorithm": ALGORITHMS[n % len(ALGORITHMS)],
            "ip": f"10.{t}.{ip // 250}.{ip % 250 + 1}",
            "route": self._rng.choice(ROUTES),
            "user_agent": USER_AGENTS[n % len(USER_AGENTS)],
        }
        if n % 10 < 7:
            check["user_id"] = f"u{n}"
        return check

    def close(self) -> None:
        for i, conn in enumerate(self._conns):
            if conn is not None:
                conn.close()
            self._conns[i] = None


class CountPoller:
    """``count()`` of one phase's decisions every 100 ms, in a thread."""

    def __init__(self, socket_path: Path, tenants: Sequence[Tenant], tag: str) -> None:
        names = ", ".join(f"'{t.name}'" for t in tenants)
        self._sql = (
            f"SELECT count() AS n FROM {DECISIONS_TABLE} "
            f"WHERE tenant IN ({names}) AND startsWith(key, '{tag}:')"
        )
        self._socket = socket_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.polls: list[tuple[float, int]] = []  # (when the answer came, count)
        self.round_trips: list[float] = []  # a slow answer makes the lags look longer
        self.errors = 0

    def count(self) -> int:
        return int(query(self._socket, self._sql, timeout=30)[0]["n"])

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                n = self.count()
                answered = time.monotonic()
                self.polls.append((answered, n))
                self.round_trips.append(answered - began)
            except AnalyticsError as exc:
                self.errors += 1
                if self.errors <= 3:
                    log(f"count() failed: {exc}")
            self._stop.wait(max(0.0, began + POLL_INTERVAL - time.monotonic()))

    def wait_for(self, total: int, timeout: float) -> float | None:
        """When the count first reached ``total`` (None if not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reached = next((at for at, n in self.polls if n >= total), None)
            if reached is not None:
                return reached
            time.sleep(POLL_INTERVAL / 2)
        return None

    def __enter__(self) -> CountPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lags(
    before: int, answers: Sequence[tuple[float, int]], polls: Sequence[tuple[float, int]]
) -> tuple[list[float], int]:
    """Each decision's time from answer to visible, sorted; and how many were never seen.

    ``before`` decisions were answered before the first of ``answers``.  The worker writes
    the stream in order and the limiter appends a batch to it before answering, so in
    order of their answers, a request's decisions are visible once a poll that ended after
    the answer counts past them (with concurrent requests, to within a request or two)."""
    found: list[float] = []
    unseen = 0
    total, i = before, 0
    for at, size in sorted(answers):
        total += size
        while i < len(polls) and (polls[i][1] < total or polls[i][0] < at):
            i += 1
        if i == len(polls):
            unseen += size
        else:
            found.extend([polls[i][0] - at] * size)
    return sorted(found), unseen


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


# ---------------------------------------------------------------------------------------
# The stack under test


class Stack:
    """``ratewatch up`` on a temporary data dir (and a private Redis if asked)."""

    def __init__(
        self, work: Path, use_redis_server: bool, startup_timeout: float, up_args: Sequence[str]
    ) -> None:
        self.work = work
        self.up_args = list(up_args)
        self.data_dir = work / "data"
        self.use_redis_server = use_redis_server
        self.startup_timeout = startup_timeout
        self.port = 0
        self.redis_url: str | None = None
        self.up: subprocess.Popen[bytes] | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.tree: Tree | None = None
        self._known: dict[int, int] = {}  # every tree process seen, with its start time
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
        )

    @property
    def socket_path(self) -> Path:
        return query_socket_path(self.data_dir / "clickhouse")

    def start(self) -> None:
        if self.use_redis_server:
            self._start_redis()
        self.port = free_port()
        argv = [sys.executable, "-m", "ratewatch", "up", "--host", HOST, "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir)]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        argv += self.up_args
        env = {**self.env, "RATEWATCH_BOOTSTRAP_KEY": secrets.token_urlsafe(30)}
        self.up = self._popen("up", argv, env)
        redis_pid = self.redis.pid if self.redis is not None else None
        self.tree = Tree(self.up.pid, self.data_dir / "run", redis_pid)
        self._wait("/health", self._health_ok)
        self._wait("the pipeline's query socket", lambda: answers(self.socket_path))
        self.remember()

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("--redis-server needs redis-server on PATH")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self.redis = self._popen("redis", [*argv, "--dir", str(self.work)], self.env)
        self.redis_url = f"redis://{HOST}:{port}"

    def _popen(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops the tree
            )
        log(f"started {name} (pid {proc.pid})")
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.work / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ensure_alive(self) -> None:
        for name, proc in (("up", self.up), ("redis", self.redis)):
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _health_ok(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self.ensure_alive()
            if ready():
                log(f"{what} answers")
                return
            time.sleep(0.2)
        raise BenchError(
            f"no answer from {what} within {self.startup_timeout:g}s:\n{self.log_tail('up')}"
        )

    def create_key(self, tenant: str) -> str:
        argv = [sys.executable, "-m", "ratewatch", "keys", "create", "--tenant", tenant]
        argv += ["--name", "bench", "--data-dir", str(self.data_dir)]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        done = subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise BenchError(f"keys create --tenant {tenant}: {done.stderr or done.stdout}")
        return done.stdout.split()[-1]

    def remember(self) -> None:
        """Note the tree's processes, so that none outlives the bench."""
        if self.tree is not None:
            self._known.update(self.tree.pids())

    def stop(self) -> None:
        """SIGTERM to the supervisor (it stops its children in order), then SIGKILL to
        whatever of the tree is left; then the private Redis."""
        if self.up is not None:
            self.remember()
            if self.up.poll() is None:
                self.up.send_signal(signal.SIGTERM)
                try:
                    self.up.wait(120)
                except subprocess.TimeoutExpired:
                    log("ratewatch up did not stop within 120 s: killing its tree")
            for pid, started in self._known.items():
                stat = read_stat(pid)
                if stat is not None and stat.started == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.up.wait(10)
            log(f"stopped ratewatch up (exit {self.up.returncode})")
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(10)
            log("stopped redis")


# ---------------------------------------------------------------------------------------
# Phases


@dataclass
class PhaseResult:
    rate: int
    achieved: float  # checks answered per second in the cost window
    cores: dict[str, float]
    pipeline_threads: dict[str, float]  # cores of the busiest thread names
    rss_mb: dict[str, float]
    threads: dict[str, float]
    peak_rss_mb: float
    load: float  # 1-minute load average at the end of the cost window
    generator_cores: float  # this process: the load generator and the /proc reads
    # the RSS split: anonymous and file-backed (shared libraries' pages), and Pss
    anon_mb: dict[str, float] = field(default_factory=dict)
    file_mb: dict[str, float] = field(default_factory=dict)
    pss_mb: dict[str, float] = field(default_factory=dict)
    answered: int = 0
    failed: int = 0
    denied: float = 0.0  # share of the checks denied by their limit
    without_redis: float = 0.0  # share answered by the fail mode: Redis did not answer in time
    blocked: int = 0
    behind_s: float = 0.0
    polled_cores: float | None = None  # the tree while count() is polled
    lag_p50_s: float | None = None
    lag_p99_s: float | None = None
    lag_max_s: float | None = None
    poll_p50_s: float | None = None  # how long a count() took to answer
    poll_p99_s: float | None = None
    unseen: int = 0
    drain_s: float | None = None
    restarts: dict[str, float] = field(default_factory=dict)  # processes born in the window


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Phases:
    """The settling traffic and the measured phases, on a started stack."""

    def __init__(
        self, args: argparse.Namespace, stack: Stack, tenants: Sequence[Tenant], traffic: Traffic
    ) -> None:
        if stack.tree is None:
            raise BenchError("ratewatch up is not running")
        self.args = args
        self.stack = stack
        self.tree: Tree = stack.tree
        self.tenants = tenants
        self.traffic = traffic

    def settle(self) -> None:
        """A few seconds of traffic, drained, before anything is measured: the first
        inserts, imports and caches happen here."""
        tag = "settle"
        log("settling: 5 s at 200 checks/s")
        self.traffic.start_phase(tag)
        self.traffic.run(200, time.monotonic() + 5)
        with CountPoller(self.stack.socket_path, self.tenants, tag) as poller:
            if poller.wait_for(self.traffic.tally.answered, self.args.drain_timeout) is None:
                raise BenchError("the settling traffic never showed up in analytics")

    def run(self, rate: int, round_no: int, phase_no: int) -> PhaseResult:
        """Warm-up, cost window and, with traffic, lag window and drain."""
        args, traffic = self.args, self.traffic
        tag = f"r{round_no}p{phase_no}-{rate}"
        traffic.start_phase(tag)
        log(f"round {round_no}, {rate:,} checks/s: warm-up {args.warmup:g} s")
        self._drive(rate, args.warmup)
        log(f"round {round_no}, {rate:,} checks/s: cost window {args.seconds:g} s")
        checks_before = traffic.tally.checks()
        start, own_start = self.tree.snapshot(), own_cpu_seconds()
        with RssSampler(self.tree) as sampler:
            self._drive(rate, args.seconds)
        end, own_end = self.tree.snapshot(with_pss=True), own_cpu_seconds()
        self.stack.ensure_alive()
        self.stack.remember()
        wall = end.at - start.at
        tally = traffic.tally
        used = cores(start, end)
        result = PhaseResult(
            rate=rate,
            achieved=(tally.checks() - checks_before) / wall,
            cores=used,
            pipeline_threads=thread_cores(start, end, used["pipeline"]),
            rss_mb={k: v / 1024 for k, v in end.by_role(lambda m: m.rss_kb).items()},
            threads=end.by_role(lambda m: m.threads),
            peak_rss_mb=max(sampler.peak_mb, end.by_role(lambda m: m.rss_kb)["tree"] / 1024),
            load=load_average(),
            generator_cores=(own_end - own_start) / wall,
            restarts={role: n for role, n in born(start, end).items() if n},
            anon_mb={k: v / 1024 for k, v in end.by_role(lambda m: m.memory.anon).items()},
            file_mb={k: v / 1024 for k, v in end.by_role(lambda m: m.memory.file).items()},
            pss_mb={k: v / 1024 for k, v in end.by_role(lambda m: m.memory.pss).items()},
        )
        if rate > 0:
            self._lag(rate, tag, result)
        checks = tally.checks()
        result.answered, result.failed = tally.answered, tally.failed
        result.denied = tally.reasons["limit"] / checks if checks else 0.0
        unstored = sum(tally.reasons[reason] for reason in UNSTORED_REASONS)
        result.without_redis = unstored / checks if checks else 0.0
        result.blocked, result.behind_s = tally.reasons["blocked"], tally.behind_s
        log(
            f"round {round_no}, {rate:,} checks/s: tree {result.cores['tree']:.3f} cores, "
            f"RSS {result.rss_mb['tree']:.0f} MB, lag p99 {fmt_s(result.lag_p99_s)}, "
            f"drained in {fmt_s(result.drain_s)} (load {result.load:.2f})"
        )
        return result

    def _drive(self, rate: int, seconds: float) -> None:
        if rate > 0:
            self.traffic.run(rate, time.monotonic() + seconds)
        else:
            time.sleep(seconds)

    def _lag(self, rate: int, tag: str, result: PhaseResult) -> None:
        log(f"{rate:,} checks/s: lag window {self.args.lag_seconds:g} s, count() every 100 ms")
        answers: list[tuple[float, int]] = []
        before = self.traffic.tally.answered
        with CountPoller(self.stack.socket_path, self.tenants, tag) as poller:
            start = self.tree.snapshot(with_memory=False)
            last = self.traffic.run(rate, time.monotonic() + self.args.lag_seconds, answers)
            end = self.tree.snapshot(with_memory=False)
            total = self.traffic.tally.answered
            visible = poller.wait_for(total, self.args.drain_timeout)
        result.polled_cores = cores(start, end)["tree"]
        result.drain_s = None if visible is None else max(0.0, visible - last)
        found, result.unseen = lags(before, answers, poller.polls)
        result.lag_p50_s = percentile(found, 50)
        result.lag_p99_s = percentile(found, 99)
        result.lag_max_s = found[-1] if found else None
        round_trips = sorted(poller.round_trips)
        result.poll_p50_s = percentile(round_trips, 50)
        result.poll_p99_s = percentile(round_trips, 99)
        if visible is None:
            final = poller.count()
            log(f"after {self.args.drain_timeout:g} s, {final:,} of {total:,} are in analytics")
        if visible is None or result.unseen:
            log(f"the end of ratewatch up's log:\n{self.stack.log_tail('up')}")


# ---------------------------------------------------------------------------------------
# Medians and output


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_result(results: Sequence[PhaseResult]) -> PhaseResult:
    """Each number the median over the rounds (a dict: key by key)."""
    rows = [asdict(r) for r in results]
    merged: dict[str, Any] = {}
    for name, first in rows[0].items():
        if isinstance(first, dict):
            keys = dict.fromkeys(k for row in rows for k in row[name])
            merged[name] = {k: median([row[name].get(k, 0.0) for row in rows]) for k in keys}
        else:
            merged[name] = median([row[name] for row in rows])
    merged["rate"] = results[0].rate
    return PhaseResult(**merged)


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def phase_name(rate: int) -> str:
    return "idle" if rate == 0 else f"{rate:,}/s"


@dataclass(frozen=True)
class Row:
    metric: str
    measured: str
    target: str
    passed: bool | None


def target_rows(results: Sequence[PhaseResult]) -> list[Row]:
    rows = []
    for r in results:
        target = TARGET_CORES.get(r.rate)
        used = r.cores["tree"]
        # on a saturated box the schedule may slip: then say at what rate this was
        held = r.achieved >= 0.95 * r.rate
        rows.append(
            Row(
                f"{phase_name(r.rate)}: CPU cores, whole tree",
                f"{used:.3f}" if held else f"{used:.3f} (at {r.achieved:,.0f}/s)",
                "" if target is None else f"<= {target:g}",
                None if target is None else used <= target,
            )
        )
    peak = max(r.peak_rss_mb for r in results)
    rows.append(
        Row(
            "tree RSS, peak of any phase",
            f"{peak:.0f} MB",
            f"<= {TARGET_RSS_MB:g} MB",
            peak <= TARGET_RSS_MB,
        )
    )
    for r in results:
        if r.rate == 0:
            continue
        p99 = r.lag_p99_s
        rows.append(
            Row(
                f"{phase_name(r.rate)}: answered -> in analytics, p99",
                fmt_s(p99),
                f"<= {TARGET_LAG_P99_S:g} s" if r.rate >= TARGET_LAG_FROM_RATE else "",
                (p99 is not None and r.unseen == 0 and p99 <= TARGET_LAG_P99_S)
                if r.rate >= TARGET_LAG_FROM_RATE
                else None,
            )
        )
        rows.append(
            Row(f"{phase_name(r.rate)}: all in analytics after", fmt_s(r.drain_s), "", None)
        )
    return rows


def print_phase(r: PhaseResult) -> None:
    head = f"{phase_name(r.rate)}" + (f" (answered {r.achieved:,.0f} checks/s)" if r.rate else "")
    print(f"\n{head}; load {r.load:.2f}")
    print(
        f"  {'process':<11} {'cores':>7} {'RSS MB':>8} {'anon':>7} {'file':>7} {'PSS MB':>8}"
        f" {'threads':>8}"
    )
    for role in (*ROLES, "tree"):
        if role == "other" and not r.threads.get(role):
            continue
        print(
            f"  {role:<11} {r.cores[role]:>7.3f} {r.rss_mb[role]:>8.1f}"
            f" {r.anon_mb.get(role, 0.0):>7.1f} {r.file_mb.get(role, 0.0):>7.1f}"
            f" {r.pss_mb.get(role, 0.0):>8.1f} {r.threads[role]:>8.0f}"
        )
    print(f"  tree RSS peak {r.peak_rss_mb:.1f} MB; load generator {r.generator_cores:.3f} cores")
    busiest = sorted(r.pipeline_threads.items(), key=lambda item: -(item[1] or 0.0))
    threads = ", ".join(f"{name} {used:.3f}" for name, used in busiest if used)
    print(f"  pipeline's busiest threads (cores): {threads or '-'}")
    if r.rate:
        per_thousand = r.cores["tree"] / r.achieved * 1000 if r.achieved else 0.0
        print(
            f"  {per_thousand:.3f} cores per 1,000 checks/s; denied by limit {r.denied:.1%}, "
            f"blocked {r.blocked:,.0f}, answered without Redis {r.without_redis:.1%}"
            + (f"; {r.behind_s:.1f} s behind schedule" if r.behind_s else "")
        )
        print(
            f"  while count() is polled every 100 ms: tree {fmt_cores(r.polled_cores)} cores; "
            f"lag p50 {fmt_s(r.lag_p50_s)}, p99 {fmt_s(r.lag_p99_s)}, max {fmt_s(r.lag_max_s)}"
            + (f", {r.unseen:,.0f} never seen" if r.unseen else "")
            + f"; count() answered in p50 {fmt_s(r.poll_p50_s)}, p99 {fmt_s(r.poll_p99_s)}"
        )
        print(
            f"  all {r.answered:,.0f} answered decisions in analytics {fmt_s(r.drain_s)} "
            "after the last answer"
        )


def fmt_cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(rows: Sequence[Row]) -> None:
    header = Row("metric", "measured", "target", None)
    w = [max(len(getattr(r, f)) for r in (header, *rows)) for f in ("metric", "measured", "target")]
    for r in (header, *rows):
        verdict = (
            "status"
            if r is header
            else ("" if r.passed is None else "PASS" if r.passed else "MISS")
        )
        print(f"{r.metric:<{w[0]}}  {r.measured:>{w[1]}}  {r.target:<{w[2]}}  {verdict}")
        if r is header:
            print("-" * (sum(w) + 12))


# ---------------------------------------------------------------------------------------
# Entry point


def parse_rates(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be integers, got {text!r}") from None
    if not rates or any(r < 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be >= 0, got {text!r}")
    return rates


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40, help="cost window per phase")
    parser.add_argument(
        "--rates",
        type=parse_rates,
        default=[0, 200, 2000],
        help="checks/s per phase, comma-separated (0: idle)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run every phase N times: medians")
    parser.add_argument("--warmup", type=float, default=5, help="seconds before each window")
    parser.add_argument("--lag-seconds", type=float, default=10, help="lag window per phase")
    parser.add_argument("--connections", type=int, default=8, help="sender connections")
    parser.add_argument(
        "--drain-timeout", type=float, default=120, help="seconds to wait for analytics"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=120, help="seconds to wait for ratewatch up"
    )
    parser.add_argument(
        "--redis-server",
        action="store_true",
        help="a private redis-server instead of the embedded Valkey",
    )
    parser.add_argument(
        "--up-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for ratewatch up, e.g. --up-arg=--workers=2 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and the logs")
    args = parser.parse_args(argv)
    if min(args.rounds, args.connections) < 1 or min(args.seconds, args.lag_seconds) <= 0:
        parser.error("--rounds, --connections, --seconds and --lag-seconds must be positive")
    return args


def measure(args: argparse.Namespace, stack: Stack) -> list[list[PhaseResult]]:
    """Start the stack, settle it, and run every phase of every round."""
    stack.start()
    tenants = [Tenant(name, stack.create_key(name), weight) for name, weight in TENANTS]
    log(f"created keys for tenants {', '.join(t.name for t in tenants)}")
    traffic = Traffic(stack.port, tenants, args.connections)
    try:
        phases = Phases(args, stack, tenants, traffic)
        phases.settle()
        rounds = [
            [phases.run(rate, n, i) for i, rate in enumerate(args.rates, 1)]
            for n in range(1, args.rounds + 1)
        ]
    finally:
        traffic.close()
    return rounds


def code_version() -> str:
    """The commit measured, and whether the work tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def report(args: argparse.Namespace, rounds: list[list[PhaseResult]], load_start: float) -> int:
    medians = [median_result([rnd[i] for rnd in rounds]) for i in range(len(args.rates))]
    rows = target_rows(medians)
    failed = sum(r.failed for rnd in rounds for r in rnd)
    load_end = load_average()
    if args.json:
        doc = {
            "config": {
                k: getattr(args, k)
                for k in (
                    "seconds",
                    "rates",
                    "rounds",
                    "warmup",
                    "lag_seconds",
                    "connections",
                    "redis_server",
                    "up_arg",
                )
            },
            "code": code_version(),
            "cpus": os.cpu_count(),
            "load_average": {"start": load_start, "end": load_end},
            "medians": [asdict(r) for r in medians],
            "rounds": [[asdict(r) for r in rnd] for rnd in rounds],
            "targets": [asdict(r) for r in rows],
            "valid": failed == 0,
        }
        print(json.dumps(doc, indent=2))
        return 1 if failed else 0
    kind = f"medians of {args.rounds} rounds" if args.rounds > 1 else "1 round"
    server = "private redis-server" if args.redis_server else "embedded Valkey"
    extra = f" {' '.join(args.up_arg)}" if args.up_arg else ""
    print(
        f"ratewatch up{extra} ({server}; code {code_version()}): {args.seconds:g} s cost "
        f"windows after {args.warmup:g} s warm-up, {args.lag_seconds:g} s lag windows; {kind}"
    )
    for r in medians:
        print_phase(r)
    if args.rounds > 1:
        print("\ntree CPU cores by round:")
        for i, rate in enumerate(args.rates):
            each = "  ".join(f"{rnd[i].cores['tree']:.3f}" for rnd in rounds)
            loads = "  ".join(f"{rnd[i].load:.2f}" for rnd in rounds)
            print(f"  {phase_name(rate):<9} {each}   (load {loads})")
    print()
    print_table(rows)
    print(
        f"\n1-min load average: {load_start:.2f} at start, {load_end:.2f} at end "
        f"({os.cpu_count()} CPUs; other work on the box moves these numbers)"
    )
    restarts = [
        f"round {n} {phase_name(r.rate)}: "
        + ", ".join(f"{role} {count:.0f}" for role, count in r.restarts.items())
        for n, rnd in enumerate(rounds, 1)
        for r in rnd
        if r.restarts
    ]
    if restarts:
        print(f"\nprocesses started during a cost window (restarts?): {'; '.join(restarts)}")
    if failed:
        print(f"\nINVALID: {failed} requests failed")
    return 1 if failed else 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Teardown is not cut short by a second Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # also when started with SIGINT ignored (in the background of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    load_start = load_average()
    log(f"load average {load_start:.2f} on {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="rw-cost-"))
    stack = Stack(work, args.redis_server, args.startup_timeout, args.up_arg)
    try:
        rounds = measure(args, stack)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        with uninterrupted():
            stack.stop()
            if args.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
                log(f"removed {work}")
    return report(args, rounds, load_start)


if __name__ == "__main__":
    sys.exit(main())
