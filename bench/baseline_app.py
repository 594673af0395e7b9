"""Baseline rate-limit service that RateWatch is compared against.

A deliberately ordinary FastAPI app built on the ``limits`` library (moving
window strategy, Redis storage), exposing the same ``POST /v1/check`` contract
as RateWatch. ``bench/check_throughput.py`` starts it automatically; to run it
by hand::

    BASELINE_REDIS_URL=redis://127.0.0.1:6380 BASELINE_TOKEN=secret \\
        /work/venv/bin/python -m uvicorn baseline_app:app --app-dir bench \\
        --loop uvloop --http httptools --no-access-log --port 8001

    curl -s -X POST localhost:8001/v1/check -H 'Authorization: Bearer secret' \\
        -H 'Content-Type: application/json' \\
        -d '{"key": "user:1", "limit": 10, "window": 60}'

Environment:
    BASELINE_REDIS_URL  ``redis://host:port`` or ``async+redis://host:port``
                        (default ``redis://127.0.0.1:6379``).
    BASELINE_TOKEN      bearer token every request must present (required).
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, Field


class CheckRequest(BaseModel):
    """Body of ``POST /v1/check``."""

    key: str = Field(min_length=1, max_length=512)
    limit: int = Field(ge=1)
    window: int = Field(ge=1, description="window length in seconds")
    cost: int = Field(default=1, ge=1)


class CheckResponse(BaseModel):
    """Decision for one check; times are in seconds."""

    allowed: bool
    remaining: int
    reset_in: float
    retry_after: float


@dataclass(frozen=True)
class Settings:
    """Configuration read from the environment at startup."""

    storage_uri: str
    token: str

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from ``BASELINE_REDIS_URL`` and ``BASELINE_TOKEN``."""
        url = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379")
        token = os.environ.get("BASELINE_TOKEN", "")
        if not token:
            raise RuntimeError("BASELINE_TOKEN must be set")
        uri = url if url.startswith("async+") else f"async+{url}"
        return cls(storage_uri=uri, token=token)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the limiter once per process."""
    settings = Settings.from_env()
    # coredis (the library default) is not installed; use redis-py's asyncio client.
    storage = RedisStorage(settings.storage_uri, implementation="redispy")
    app.state.settings = settings
    app.state.limiter = MovingWindowRateLimiter(storage)
    yield


app = FastAPI(title="RateWatch baseline (limits)", lifespan=lifespan)


def require_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Reject requests whose ``Authorization: Bearer`` token does not match."""
    expected: str = request.app.state.settings.token
    scheme, _, supplied = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="invalid or missing token")


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness probe."""
    return {"status": "ok"}


@app.post("/v1/check", dependencies=[Depends(require_token)])
async def check(body: CheckRequest, request: Request) -> CheckResponse:
    """Consume ``cost`` from ``key``'s moving window and report the outcome."""
    limiter: MovingWindowRateLimiter = request.app.state.limiter
    item = RateLimitItemPerSecond(body.limit, body.window)
    allowed = await limiter.hit(item, body.key, cost=body.cost)
    stats = await limiter.get_window_stats(item, body.key)
    reset_in = round(max(0.0, stats.reset_time - time.time()), 3)
    return CheckResponse(
        allowed=allowed,
        remaining=max(0, stats.remaining),
        reset_in=reset_in,
        retry_after=0.0 if allowed else reset_in,
    )
