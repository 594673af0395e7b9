"""The Kafka consumer end to end: a real broker (tansu), `ratewatch stream`, chDB.

Usage::

    /work/venv/bin/python bench/consumer_throughput.py [--events 500000] [--partitions 3]
        [--rate 10000] [--seconds 20]

1. Throughput: produces ``--events`` decision events to a fresh topic, then starts
   `ratewatch stream` on a fresh chDB directory and times it from the moment it joined its
   group until every row is visible through its query socket (and so every rollup, which
   the same inserts feed).  Target: 50,000 events/s or more.
2. Lag: a second consumer (fresh topic and directory), then events produced at a steady
   ``--rate`` per second for ``--seconds``, each stamped with its production time.  Rows of
   one partition become visible in offset order, so polling the highest stored offset of
   each partition tells when each event became visible; lag = visible − produced.  Prints
   p50/p99 against the target p99 ≤ 2 s.

Both consumers run as the real command, so the numbers include the broker fetch, polars,
the Arrow insert with its three rollup views, the ledger, and the offset commits.  Also
prints the consumer process's CPU time and the machine's load: on a shared 2-core box
another process's load moves the wall-clock numbers.  Everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]  # noqa: E402

from analytics.clickhouse import DECISIONS_TABLE, ROLLUP_TABLES  # noqa: E402
from analytics.event_store import CONSUMED_TABLE  # noqa: E402
from analytics.query_client import answers, query  # noqa: E402
from stream.events import DecisionEvent, encode  # noqa: E402
from tests.support.kafka import KafkaBroker, create_topic  # noqa: E402

THROUGHPUT_TARGET = 50_000
LAG_P99_TARGET = 2.0
REASONS = ("ok", "ok", "ok", "ok", "limit", "blocked")


def make_event(seq: int, ts: int) -> bytes:
    reason = REASONS[seq % len(REASONS)]
    return encode(
        DecisionEvent(
            event_id=str(uuid.uuid4()),
            ts=ts,
            tenant=f"tenant-{seq % 20}",
            key=f"user:{seq * 7919 % 1000}",
            algorithm=("sliding_window", "token_bucket", "fixed_window")[seq % 3],
            limit=100,
            window=60,
            cost=1,
            allowed=reason == "ok",
            remaining=seq % 100,
            reset_in=seq % 60,
            reason=reason,
            ip=f"10.0.{seq % 256}.{seq * 31 % 256}",
            route=("/v1/orders", "/v1/search", "/login", None)[seq % 4],
            user_agent=("curl/8.5", "Mozilla/5.0 (X11; Linux x86_64)", None)[seq % 3],
            user_id=f"u{seq % 5000}" if seq % 10 < 7 else None,
            latency_us=150 + seq % 500,
            instance="limiter-1",
        )
    )


class Consumer:
    """`ratewatch stream` on its own topic, group and chDB directory."""

    def __init__(self, bootstrap: str, topic: str, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "data" / "clickhouse" / "query.sock"
        self.log = workdir / "stream.log"
        args = ["stream", "--kafka", bootstrap, "--topic", topic, "--group", f"bench-{topic}"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ratewatch", *args, "--data-dir", str(workdir / "data")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_joined(self, timeout: float = 60) -> float:
        """Until the consumer joined its group; the time it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ratewatch stream exited: {self.log.read_text()[-2000:]}")
            if "RateWatch stream:" in self.log.read_text(errors="replace") and answers(self.socket):
                return time.monotonic()
            time.sleep(0.01)
        raise TimeoutError("ratewatch stream did not join its group")

    def scalar(self, sql: str) -> int:
        return int(next(iter(query(self.socket, sql)[0].values())))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def produce_all(bootstrap: str, topic: str, partitions: int, n: int) -> float:
    """``n`` events, as full record batches per partition; the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20)
    await producer.start()
    started = time.monotonic()
    now = int(time.time() * 1000)
    try:
        pending = []
        seq = 0
        while seq < n:
            for partition in range(partitions):
                batch = producer.create_batch()
                while seq < n and batch.append(
                    key=None, value=make_event(seq, now), timestamp=None
                ):
                    seq += 1
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                if seq >= n:
                    break
            if len(pending) > 50:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


async def produce_steadily(
    bootstrap: str, topic: str, rate: int, seconds: float
) -> list[tuple[int, int, float]]:
    """Events at ``rate`` per second (in 10 ms ticks), each stamped when produced; returns
    (partition, offset, produced at, as time.time()) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent: list[tuple[asyncio.Future[object], float]] = []
    try:
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        start = time.monotonic()
        seq = 0
        for i in range(int(seconds / tick)):
            await asyncio.sleep(max(0.0, start + i * tick - time.monotonic()))
            now = time.time()
            for _ in range(per_tick):
                future = await producer.send(
                    topic, make_event(seq, int(now * 1000)), key=str(seq).encode()
                )
                sent.append((future, now))
                seq += 1
        results = [(await future, at) for future, at in sent]
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset, at) for meta, at in results]  # type: ignore[attr-defined]


def throughput(broker: KafkaBroker, workdir: Path, events: int, partitions: int) -> bool:
    topic = "bench-throughput"
    asyncio.run(create_topic(broker.bootstrap, topic, partitions))
    took = asyncio.run(produce_all(broker.bootstrap, topic, partitions, events))
    print(f"produced {events:,} events to {partitions} partitions in {took:.1f}s")
    consumer = Consumer(broker.bootstrap, topic, workdir / "throughput")
    try:
        joined = consumer.wait_joined()
        cpu_at_join = consumer.cpu_seconds()
        first = None
        while True:
            # the ledger is written after an insert's rollups: then all of it is visible
            stored = consumer.scalar(f"SELECT count() FROM {CONSUMED_TABLE}")
            if stored and first is None:
                first = time.monotonic()
            if stored >= events:
                break
            time.sleep(0.05)
        count = consumer.scalar(f"SELECT count() FROM {DECISIONS_TABLE}")
        done = time.monotonic()
        cpu = consumer.cpu_seconds() - cpu_at_join
        rollups = [
            consumer.scalar(f"SELECT sum(requests) FROM {t}") for t in ROLLUP_TABLES.values()
        ]
    finally:
        consumer.stop()
    rate = events / (done - joined)
    print(
        f"consumed {events:,} events in {done - joined:.2f}s after joining the group "
        f"(first rows after {(first or done) - joined:.2f}s): {rate:,.0f} events/s"
    )
    print(f"consumer CPU time: {cpu:.1f}s ({events / cpu:,.0f} events per CPU-second)")
    exact = count == events and rollups == [events] * 3
    print(f"raw rows {count:,}, rollup requests {rollups}: {'exact' if exact else 'WRONG'}")
    verdict = "PASS" if rate >= THROUGHPUT_TARGET else "FAIL"
    print(f"target ≥ {THROUGHPUT_TARGET:,} events/s: {verdict} ({rate / THROUGHPUT_TARGET:.2f}×)")
    return exact


def lag(broker: KafkaBroker, workdir: Path, rate: int, seconds: float, partitions: int) -> bool:
    topic = "bench-lag"
    asyncio.run(create_topic(broker.bootstrap, topic, partitions))
    consumer = Consumer(broker.bootstrap, topic, workdir / "lag")
    try:
        consumer.wait_joined()
        visible: list[tuple[float, dict[int, int]]] = []  # (time.time(), partition → max)
        producing = asyncio.new_event_loop()
        produced: list[tuple[int, int, float]] = []
        thread = threading.Thread(
            target=lambda: produced.extend(
                producing.run_until_complete(
                    produce_steadily(broker.bootstrap, topic, rate, seconds)
                )
            )
        )
        thread.start()
        total = int(seconds / 0.01) * max(1, int(rate * 0.01))
        deadline = time.monotonic() + seconds + 60
        while time.monotonic() < deadline:
            rows = query(
                consumer.socket,
                f"SELECT source_partition AS p, max(source_offset) AS o FROM {DECISIONS_TABLE}"
                " GROUP BY p",
            )
            visible.append((time.time(), {int(r["p"]): int(r["o"]) for r in rows}))
            if not thread.is_alive() and sum(o + 1 for o in visible[-1][1].values()) >= total:
                break
            time.sleep(0.02)
        thread.join()
        producing.close()
    finally:
        consumer.stop()
    lags = []
    by_partition: dict[int, list[tuple[int, float]]] = {}
    for partition, offset, at in produced:
        by_partition.setdefault(partition, []).append((offset, at))
    for partition, sent in by_partition.items():
        sent.sort()
        i = 0
        for at_poll, maxima in visible:
            top = maxima.get(partition, -1)
            while i < len(sent) and sent[i][0] <= top:
                lags.append(max(0.0, at_poll - sent[i][1]))
                i += 1
    missing = len(produced) - len(lags)
    lags.sort()
    p50 = statistics.median(lags)
    p99 = lags[int(len(lags) * 0.99) - 1]
    print(
        f"lag at {rate:,} events/s for {seconds:g}s ({len(produced):,} events, polled every "
        f"~20 ms): p50 {p50:.3f}s, p99 {p99:.3f}s, max {lags[-1]:.3f}s"
        + (f", {missing} never seen" if missing else "")
    )
    verdict = "PASS" if p99 <= LAG_P99_TARGET else "FAIL"
    print(f"target p99 ≤ {LAG_P99_TARGET:g}s: {verdict}")
    return missing == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip-lag", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="rw-bench-") as tmp:
        workdir = Path(tmp)
        broker = KafkaBroker(workdir).start()
        try:
            ok = throughput(broker, workdir, args.events, args.partitions)
            if not args.skip_lag:
                ok = lag(broker, workdir, args.rate, args.seconds, args.partitions) and ok
        finally:
            broker.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
