"""uvicorn's httptools protocol with the bounds a public server needs and uvicorn lacks.

uvicorn closes a kept-alive connection after ``timeout_keep_alive`` and can refuse work past
``limit_concurrency``, but a client that sends its headers or its body slowly (or never)
holds its connection as long as it likes, and headers may be any size.  This protocol adds,
per connection:

- a header timeout: from the connection's start or a request's first byte to the end of its
  headers (408, connection closed);
- a body timeout: from the end of the headers to the end of the body (408, closed);
- a header size bound: headers still incomplete after ``max_header_bytes`` (431, closed).
  Bytes are counted per read (up to 256 KiB with uvloop): headers that end within the read
  that passes the bound are let through, as are, for a client that pipelines requests,
  the bytes of a read that also ended the previous request.  What one request holds is
  bounded all the same;
- a connection bound: a request on a connection beyond ``max_connections`` open ones is
  answered 503 (``Retry-After``) and its connection closed.

The answers are RFC 9457 problem details.  One timer per connection, armed at its first
deadline and moved only when it fires (a deadline is a float set per phase), so a request
costs no timer of its own (only a deadline earlier than the armed timer moves it).  The
keep-alive timeout (``--keep-alive-timeout``: an answered connection closed once idle that
long) is one more phase on the same timer: uvicorn arms a timer of its own after every
response and cancels it at the next request's first bytes, a timer per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from limiter.http.problems import Problem


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int


def problem_response(problem: Problem, instance: str | None = None) -> bytes:
    """``problem`` as a complete HTTP/1.1 response that closes the connection."""
    body = problem.body(instance)
    head = [STATUS_LINE[problem.status]]
    for name, value in problem.headers():
        head += [name, b": ", value, b"\r\n"]
    head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The answer to a request on a connection beyond the bound."""
    problem = Problem(
        503, "too-many-connections", "the server has too many open connections; retry later"
    )
    headers = [*problem.headers(), (b"connection", b"close")]
    body = problem.body(scope.get("path"))
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: float | None = None  # when the current phase must have ended
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the armed timer fires
        self._reading_body = False
        self._idle = False  # answered, waiting for the next request (the keep-alive phase)
        self._header_bytes = 0  # received since the last request's headers ended

    @classmethod
    def bounded(cls, limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
        """This protocol with ``limits`` (uvicorn instantiates the class itself)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # a connection that sends nothing is cut as one that sends its headers slowly
        self._expect(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_body:
            super().data_received(data)
            return
        self._header_bytes += len(data)
        super().data_received(data)
        if (
            not self._reading_body
            and self._header_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            limit = self.limits.max_header_bytes
            self._refuse(
                Problem(
                    431,
                    "headers-too-large",
                    f"the request's headers exceed the limit of {limit} bytes",
                    max_bytes=limit,
                )
            )

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._idle = False
        self._expect(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._reading_body = True
        self._header_bytes = 0
        self._expect(self.limits.body_timeout)
        if len(self.connections) <= self.limits.max_connections:
            super().on_headers_complete()
            return
        app, self.app = self.app, _overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_body = False
        self._deadline = None  # the keep-alive timeout takes over once it is answered

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout on the connection's timer instead of a
        # timer of its own armed here and cancelled by the next request
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a request pipelined behind this one starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._reading_body:  # answered before its body ended: the body timeout
            self._idle = True
            self._expect(self.timeout_keep_alive)

    # the deadlines

    def _expect(self, seconds: float) -> None:
        self._deadline = deadline = self.loop.time() + seconds
        # a later deadline waits for the armed timer to fire; only an earlier one re-arms it
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:  # the phase changed since: wait for its deadline
            self._arm(deadline)
            return
        if self._idle:  # kept alive long enough without a request: closed, as uvicorn does
            self._deadline = None
            self.transport.close()
            return
        phase = "body" if self._reading_body else "headers"
        seconds = self.limits.body_timeout if self._reading_body else self.limits.header_timeout
        self._refuse(
            Problem(
                408,
                "request-timeout",
                f"the request's {phase} did not arrive within {seconds:g} seconds",
                timeout=seconds,
            )
        )

    def _refuse(self, problem: Problem) -> None:
        """Answer ``problem`` unless a response is under way or sent for this request, and
        close the connection."""
        self._deadline = None
        cycle = self.cycle
        if not self._reading_body:
            # the cycle, if any, is the previous request's: answer once it is answered
            if cycle is None or cycle.response_complete:
                self.transport.write(problem_response(problem))
        elif not cycle.response_started:
            self.transport.write(problem_response(problem, self.scope["path"]))
            # the application's next receive() is a disconnect; what it sends is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
