"""Check requests sent to a live limiter: a baseline of ordinary users, a single-IP burst,
and a thread that keeps sending them, for tests that wait for the detector to notice.

(``tests.support.scenarios`` is the other kind of synthetic traffic: labelled decision
frames fed to a detector in the test's own process.)"""

from __future__ import annotations

import threading
from typing import Any

import httpx


def burst_checks(ip: str, count: int) -> list[dict[str, Any]]:
    """A single-IP burst: one address hammering the login route far past its limit."""
    return [
        {
            "key": f"ip:{ip}",
            "limit": 60,
            "window": 60,
            "ip": ip,
            "route": "/login",
            "user_agent": "python-requests/2.31",
        }
        for _ in range(count)
    ]


def background_users(count: int) -> list[dict[str, Any]]:
    """Ordinary users of the same tenant, so the attack stands out from a baseline."""
    return [
        {
            "key": f"user:{n}",
            "limit": 100,
            "window": 60,
            "ip": f"198.51.100.{n % 250 + 1}",
            "user_id": f"user:{n}",
            "route": f"/items/{n % 17}",
            "user_agent": "Mozilla/5.0",
        }
        for n in range(count)
    ]


class Traffic:
    """Sends batches every half second in a thread until stopped; remembers the answers."""

    def __init__(self, client: httpx.Client, batch: list[dict[str, Any]]):
        self.client = client
        self.batch = batch
        self.results: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            response = self.client.post("/v1/batch", json={"checks": self.batch})
            if response.status_code == 200:
                self.results += response.json()["results"]
            self._stop.wait(0.5)


def check_from(client: httpx.Client, ip: str) -> dict[str, Any]:
    """One check from ``ip`` under a limit it cannot reach: its reason says whether a
    block stands against the address."""
    response = client.post(
        "/v1/check", json={"key": f"probe:{ip}", "limit": 1000, "window": 60, "ip": ip}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
