"""The driver: each tick's checks as ``POST /v1/batch`` requests, paced in real time, while
``GET /v1/blocks`` is polled every second.

What it records is raw: the first moment each subject had a check answered
``reason: "blocked"``, every block that appeared during the run, and traffic counts.  The
scorer decides what they mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ratewatch.simulate.errors import SimulationError
from ratewatch.simulate.model import Identity, Request
from ratewatch.simulate.scenarios import Simulation

MAX_BATCH = 1000  # checks per /v1/batch request, the API's limit
POLL_SECONDS = 1.0
MAX_IN_FLIGHT = 16  # batch requests awaiting an answer; beyond it the driver falls behind


@dataclass(frozen=True, slots=True)
class SeenBlock:
    """A block listed by ``GET /v1/blocks``; ``created_at`` in seconds since the run began."""

    id: str
    scope: str
    value: str
    mode: str
    created_at: float
    reason: str = ""
    detector: str | None = None


@dataclass
class Traffic:
    checks_sent: int = 0
    checks_answered: int = 0
    checks_failed: int = 0  # in batches without an answer (unreachable, timeout, 5xx)
    reasons: Counter[str] = field(default_factory=Counter)
    max_lag: float = 0.0  # how far behind schedule a tick was sent, in seconds
    poll_failures: int = 0


@dataclass
class Observations:
    started_at: float  # epoch seconds
    # subject identity -> seconds since the start when a check of its was first answered
    # "blocked"
    denied: dict[Identity, float] = field(default_factory=dict)
    blocks: dict[str, SeenBlock] = field(default_factory=dict)
    preexisting_blocks: int = 0  # active before the run; not counted as its blocks
    traffic: Traffic = field(default_factory=Traffic)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail else response.reason_phrase


def _refusal(response: httpx.Response) -> SimulationError:
    return SimulationError(
        f"{response.request.url} refused the API key ({response.status_code}): {_detail(response)}"
    )


class Driver:
    """Runs ``simulation`` against the service behind ``client`` (base URL and API key
    set); ``on_tick`` is called after each tick's checks are on their way."""

    def __init__(
        self,
        simulation: Simulation,
        client: httpx.AsyncClient,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._simulation = simulation
        self._client = client
        self._on_tick = on_tick
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._fatal: SimulationError | None = None
        self._preexisting: set[str] = set()
        self._started = 0.0  # loop time
        self._observations = Observations(started_at=0.0)

    async def run(self) -> Observations:
        existing = await self._list_blocks()  # also proves the URL and the key
        self._preexisting = {str(block.get("id")) for block in existing}
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        observations = self._observations = Observations(
            started_at=time.time(), preexisting_blocks=len(self._preexisting)
        )
        poller = asyncio.create_task(self._poll_blocks())
        batches: set[asyncio.Task[None]] = set()
        timeline = self._simulation.timeline
        try:
            for k in range(timeline.ticks):
                lag = await self._sleep_until(k * timeline.tick)
                observations.traffic.max_lag = max(observations.traffic.max_lag, lag)
                for chunk in _chunks(self._simulation.tick(k), MAX_BATCH):
                    await self._slots.acquire()
                    task = asyncio.create_task(self._send(chunk))
                    batches.add(task)
                    task.add_done_callback(batches.discard)
                if self._fatal is not None:
                    raise self._fatal
                if self._on_tick is not None:
                    self._on_tick()
            await self._sleep_until(timeline.duration)
            if batches:
                await asyncio.gather(*batches)
            if self._fatal is not None:
                raise self._fatal
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            for task in batches:
                task.cancel()
        try:  # blocks made since the last poll
            await self._poll_once()
        except SimulationError:
            observations.traffic.poll_failures += 1
        return observations

    async def _sleep_until(self, offset: float) -> float:
        """Wait for ``offset`` seconds into the run; how late it is already if it passed."""
        delay = self._started + offset - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, -delay)

    def _elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self._started

    async def _send(self, chunk: Sequence[Request]) -> None:
        traffic = self._observations.traffic
        traffic.checks_sent += len(chunk)
        try:
            response = await self._client.post(
                "/v1/batch", json={"checks": [request.check.to_json() for request in chunk]}
            )
        except httpx.HTTPError:
            traffic.checks_failed += len(chunk)
            return
        finally:
            self._slots.release()
        if response.status_code in (401, 403):
            self._fatal = _refusal(response)
            return
        if response.status_code >= 500:
            traffic.checks_failed += len(chunk)
            return
        if response.status_code != 200:
            self._fatal = SimulationError(
                f"POST /v1/batch answered {response.status_code}: {_detail(response)}"
            )
            return
        at = self._elapsed()
        results = response.json()["results"]
        traffic.checks_answered += len(results)
        denied = self._observations.denied
        for request, result in zip(chunk, results, strict=True):
            reason = str(result.get("reason", "unknown"))
            traffic.reasons[reason] += 1
            if reason == "blocked":
                denied.setdefault(request.subject.identity, round(at, 3))

    async def _list_blocks(self) -> list[dict[str, Any]]:
        request = self._client.build_request("GET", "/v1/blocks")
        url = request.url
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            raise SimulationError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise _refusal(response)
        if response.status_code != 200:
            raise SimulationError(f"GET {url} answered {response.status_code}: {_detail(response)}")
        try:
            blocks = response.json()["blocks"]
        except (ValueError, KeyError, TypeError):
            raise SimulationError(f"{url} did not answer like a RateWatch service") from None
        return list(blocks)

    async def _poll_blocks(self) -> None:
        while True:
            try:
                await self._poll_once()
            except SimulationError:
                self._observations.traffic.poll_failures += 1
            await asyncio.sleep(POLL_SECONDS)

    async def _poll_once(self) -> None:
        observations = self._observations
        for block in await self._list_blocks():
            block_id = str(block.get("id"))
            if block_id in self._preexisting or block_id in observations.blocks:
                continue
            observations.blocks[block_id] = SeenBlock(
                id=block_id,
                scope=str(block.get("scope")),
                value=str(block.get("value")),
                mode=str(block.get("mode") or "enforce"),
                created_at=round(float(block.get("created_at") or 0) - observations.started_at, 3),
                reason=str(block.get("reason") or ""),
                detector=block.get("detector"),
            )


def _chunks(requests: list[Request], size: int) -> list[list[Request]]:
    return [requests[i : i + size] for i in range(0, len(requests), size)]
