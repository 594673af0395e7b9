"""HTTP/1.1 over a plain socket, for the tests that need what an HTTP client hides:
pipelined requests, a slow or partial request, responses read one by one, a closed
connection."""

from __future__ import annotations

import json
import socket
from typing import NamedTuple

from tests.support.servers import RatewatchProcess


class Reply(NamedTuple):
    """One response: its status, its headers (names in lower case) and its body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        document: dict[str, object] = json.loads(self.body)
        return document

    def problem(self) -> dict[str, object]:
        assert self.headers["content-type"] == "application/problem+json"
        return self.json()


class Replies:
    """The responses read off one connection, in order (each with a content-length); bytes
    read past one response are kept for the next."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._data = b""

    def next(self) -> Reply:
        while b"\r\n\r\n" not in self._data:
            self._receive("a response's head")
        head, _, self._data = self._data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self._data) < length:
            self._receive("the response's body ended")
        body, self._data = self._data[:length], self._data[length:]
        return Reply(int(status_line.split()[1]), headers, body)

    def closed(self) -> bool:
        """Whether the server closed the connection with nothing more to read."""
        return self._data == b"" and closed(self._sock)

    def _receive(self, what: str) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {what}; unread: {self._data!r}")
        self._data += chunk


def read_reply(sock: socket.socket) -> Reply:
    """One HTTP/1.1 response with a content-length, read from ``sock``."""
    return Replies(sock).next()


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset, nothing more to read)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def connect(server: RatewatchProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)
