"""Fixtures of the client library's tests: addresses where no limiter answers, for what a
client does when its limiter cannot be reached."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.servers import free_port


@pytest.fixture
def closed_url() -> str:
    """A URL nobody listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL whose server accepts connections and never answers: requests time out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
