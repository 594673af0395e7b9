"""``ratewatch simulate`` played against a live limiter in a process of its own, for tests
that read its report or watch the limiter meanwhile."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from tests.support.servers import RatewatchProcess


@contextlib.contextmanager
def simulating(
    limiter: RatewatchProcess, api_key: str, *options: str
) -> Iterator[subprocess.Popen[str]]:
    """``ratewatch simulate --url <limiter> <options> --json`` as ``api_key``, with none of
    this environment's ``RATEWATCH_`` settings; killed if it still runs on the way out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ratewatch", "simulate", "--url", limiter.base_url, *options,
         "--json"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")},
            "RATEWATCH_API_KEY": api_key,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
