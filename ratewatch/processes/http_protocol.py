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

A request the check lane can answer (``lane_cycle.py``: ``POST /v1/check`` or ``/v1/batch``
with a cached key and a body of known length) gets a ``LaneCycle`` instead of uvicorn's
request cycle, and no task; every other request goes through uvicorn as before.  The
request's ASGI scope is built only for a request that goes through uvicorn.

The answers are RFC 9457 problem details.  One timer per connection, armed at its first
deadline and moved only when it fires (a deadline is a float set per phase), so a request
costs no timer of its own (only a deadline earlier than the armed timer moves it).  The
keep-alive timeout (``--keep-alive-timeout``: an answered connection closed once idle that
long) is one more phase on the same timer: uvicorn arms a timer of its own after every
response and cancels it at the next request's first bytes, a timer per request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from limiter.http.lane import CheckLane
from limiter.http.problems import Problem
from ratewatch.processes.lane_cycle import LaneCycle


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


class LaneSource(Protocol):
    """The application's check lane, once it has started (``control.app.LimiterApp``)."""

    check_lane: CheckLane | None


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]
    lanes: ClassVar[LaneSource | None] = None

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
        self._read_when_writable = False  # reading paused until the client reads again

    @classmethod
    def bounded(
        cls, limits: ConnectionLimits, lanes: LaneSource | None = None
    ) -> type[BoundedHttpToolsProtocol]:
        """This protocol with ``limits``, handing what it can to the check lane of
        ``lanes`` (uvicorn instantiates the class itself)."""
        return type(cls.__name__, (cls,), {"limits": limits, "lanes": lanes})

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
        # uvicorn builds the request's scope here; it is built once the request is known
        # to go through uvicorn (``_begin_scope``): one on the check lane needs none
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._idle = False
        self._expect(self.limits.header_timeout)

    def _begin_scope(self) -> None:
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, with a list of headers of its own
        self.url, self.expect_100_continue = url, expect_100_continue
        self.headers.extend(headers)

    def on_headers_complete(self) -> None:
        self._reading_body = True
        self._header_bytes = 0
        self._expect(self.limits.body_timeout)
        if len(self.connections) <= self.limits.max_connections:
            cycle = self._lane_cycle()
            if cycle is not None:
                self._queue(cycle)
                return
            self._begin_scope()
            super().on_headers_complete()
            return
        self._begin_scope()
        app, self.app = self.app, _overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle  # uvicorn's cycle, or the lane's
        if cycle.__class__ is LaneCycle:
            cycle.body += body  # no more than its content-length, which the lane's bound allows
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if cycle.__class__ is LaneCycle:
            cycle.complete = True
            if cycle.may_start:
                cycle.start(time.perf_counter_ns())
        else:
            super().on_message_complete()
        self._reading_body = False
        self._deadline = None  # the keep-alive timeout takes over once it is answered

    # the check lane

    def _lane_cycle(self) -> LaneCycle | None:
        """The lane's cycle for this request if the lane can answer it: ``POST`` to one of
        its routes with a body of known length within the route's bound, and a key the
        cache holds that is not a signed one.  Anything else (and a request to refuse)
        goes through uvicorn and the application."""
        lanes = self.lanes
        lane = lanes.check_lane if lanes is not None else None
        if lane is None or self.expect_100_continue:
            return None
        route = self.url
        limit = lane.body_limits.get(route)
        parser = self.parser
        if limit is None or parser.get_method() != b"POST" or parser.should_upgrade():
            return None
        authorization = length = None
        for name, value in self.headers:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit() or int(length) > limit:
            return None
        principal = lane.principal(authorization)
        if principal is None:
            return None
        return LaneCycle(
            lane,
            route,
            principal,
            self.transport,
            self.server_state.default_headers,
            parser.get_http_version() != "1.0" and parser.should_keep_alive(),
            self.on_response_complete,
        )

    def _queue(self, cycle: LaneCycle) -> None:
        """Make ``cycle`` the current request; it starts once the one before is answered."""
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]  # uvicorn's attributes, not its class
        if existing is None or existing.response_complete:
            cycle.may_start = True
        else:  # pipelined behind a request still unanswered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]  # no app: the lane

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if cycle.__class__ is LaneCycle:  # its turn, once pipelined
            cycle.may_start = True
            if cycle.complete:
                cycle.start(time.perf_counter_ns())
            return
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout on the connection's timer instead of a
        # timer of its own armed here and cancelled by the next request
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        flow = self.flow
        if flow.write_paused:
            # the client is not reading its answers (the lane writes without awaiting the
            # transport): nothing more is read from it until it does
            flow.pause_reading()
            self._read_when_writable = True
        else:
            flow.resume_reading()
        if self.pipeline:  # a request pipelined behind this one starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._reading_body:  # answered before its body ended: the body timeout
            self._idle = True
            self._expect(self.timeout_keep_alive)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._read_when_writable:
            self._read_when_writable = False
            self.flow.resume_reading()

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
        cycle: Any = self.cycle
        if not self._reading_body:
            # the cycle, if any, is the previous request's: answer once it is answered
            if cycle is None or cycle.response_complete:
                self.transport.write(problem_response(problem))
        elif not cycle.response_started:
            path = cycle.path if cycle.__class__ is LaneCycle else self.scope["path"]
            self.transport.write(problem_response(problem, path))
            # the application's next receive() is a disconnect; what it sends is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
