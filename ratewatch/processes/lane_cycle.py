"""A request on the check lane, in the place of uvicorn's request cycle.

``serve``'s protocol (``http_protocol.py``) gives a request it can hand to the check lane
(``limiter/http/lane.py``) one of these instead of uvicorn's ``RequestResponseCycle``: no
task, no ASGI messages, one write for the head and body.  It keeps the attributes through
which uvicorn's protocol follows its current request (``response_complete``,
``keep_alive``, ``disconnected``, ``message_event``), so pipelined requests, a lost
connection and a graceful shutdown are handled for it as for any other: a request
pipelined behind it waits for its answer, one that it follows waits for the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from limiter.auth import Principal
from limiter.http.asgi import Headers
from limiter.http.lane import CheckLane


class _NoWaiter:
    """uvicorn wakes a cycle's reader on a lost connection; nothing here waits to read."""

    def set(self) -> None:
        pass


_NO_WAITER = _NoWaiter()


class LaneCycle:
    __slots__ = (
        "_default_headers",
        "_lane",
        "_on_response",
        "_principal",
        "_route",
        "_transport",
        "body",
        "complete",
        "disconnected",
        "keep_alive",
        "may_start",
        "path",
        "response_complete",
        "response_started",
    )
    message_event = _NO_WAITER

    def __init__(
        self,
        lane: CheckLane,
        route: bytes,
        principal: Principal,
        transport: asyncio.Transport,
        default_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        on_response: Callable[[], None],
    ):
        self._lane = lane
        self._route = route
        self._principal = principal
        self._transport = transport
        self._default_headers = default_headers  # uvicorn's (the Date), updated each second
        self._on_response = on_response
        self.path = route.decode("ascii")
        self.keep_alive = keep_alive  # a graceful shutdown clears it: closed once answered
        self.body = bytearray()
        self.complete = False  # its body has ended
        self.may_start = False  # no request before it on its connection is still unanswered
        self.disconnected = False
        self.response_started = False
        self.response_complete = False

    def start(self, started_ns: int) -> None:
        """Its turn has come (``may_start``) and its body has ended: to the lane."""
        self._lane.submit(self._route, self._principal, bytes(self.body), started_ns, self)

    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        if self.disconnected or self.response_started:
            return  # the client went away, or was answered (a timeout's 408)
        self.response_started = True
        head = [STATUS_LINE[status]]
        for name, value in self._default_headers:
            head += (name, b": ", value, b"\r\n")
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", body)
        transport = self._transport
        transport.write(b"".join(head))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        self._on_response()
