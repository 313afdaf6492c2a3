"""The HTTP edge of `mla serve`: header limits, a header deadline and a connection cap in uvicorn's protocol.

uvicorn bounds none of these. llhttp (httptools) takes headers without end and uvicorn keeps each
one (300 MiB of small headers on one connection: 2.7 GB RSS, the event loop stalled for seconds);
a client may take forever to send them (slowloris); and every connection holds a file descriptor
until its client leaves (about 20,000 half-open ones used them all, and new clients could not
connect). `EdgeProtocol` is uvicorn's httptools protocol with the four bounds of the settings:

- request line and headers over MLA_MAX_HEADER_BYTES, or more than MLA_MAX_HEADERS fields: 431;
- headers not complete MLA_HEADER_TIMEOUT_SECONDS after the connection was made or the request's
  first byte came: 408 (the idle time between keep-alive requests stays uvicorn's timeout_keep_alive);
- past MLA_MAX_CONNECTIONS open connections, the one that has waited longest for its headers is
  closed (503) to make room; when none waits, the new one is.

Each answer is the service's JSON error with `Connection: close`, and the connection closes.
`uvicorn_options` gives uvicorn.Config it, after raising the process's file limit to fit the cap
(`mla serve` builds its server with them).

It depends on uvicorn internals: see `CHECKED_UVICORN`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any, ClassVar

from service.errors import error_body
from service.settings import Settings

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - the project pins httptools; uvicorn then falls back to h11
    httptools = None  # type: ignore[assignment]

log = logging.getLogger("service.edge")

# What EdgeProtocol uses of uvicorn's HttpToolsProtocol, read in 0.54: its parser callbacks (on_message_begin,
# on_url, on_header, on_headers_complete, on_message_complete), connection_made/lost, data_received
# (rewritten here), send_400_response, handle_websocket_upgrade, _should_upgrade,
# _unsupported_upgrade_warning, _unset_keepalive_if_required, and the attributes parser, transport,
# flow, cycle (its response_complete and keep_alive), loop, logger, server_state.default_headers;
# STATUS_LINE. And of httptools: a callback's exception stops feed_data with HttpParserCallbackError.
# tests/service/test_http_edge.py fails on another uvicorn minor version until this is read again.
CHECKED_UVICORN = "0.54."

# The file descriptors kept out of the connection cap, besides uvicorn's accept backlog (the
# connections the event loop may accept in one go before any of them is counted):
# - BASE_FDS: the interpreter, its libraries, ONNX Runtime, the event loop's epoll and self-pipe,
#   the listening socket, logs (20 once ready, two decode workers included: measured), with room for
#   what opens later (probes, metrics scrapes, the model read again on reload);
# - 2 per request in flight (MLA_MAX_REQUESTS_IN_FLIGHT): an upload may spool an audio and a
#   video file to MLA_TMP_DIR;
# - FDS_PER_WORKER per decode worker: its socket pair end, process handle and pipes, twice over
#   while a hung or dead worker is being replaced.
BASE_FDS = 96
FDS_PER_WORKER = 8
BACKLOG = 2048  # uvicorn's default, passed explicitly so the reserve knows it


def fd_reserve(settings: Settings) -> int:
    """Descriptors the process needs besides its connections (the accept backlog apart)."""
    return BASE_FDS + 2 * settings.max_requests_in_flight + FDS_PER_WORKER * settings.decode_workers


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (thousands of connections need it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS caps it below the hard limit
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def connection_cap(settings: Settings, soft_limit: int) -> int:
    """MLA_MAX_CONNECTIONS, clamped so that the connections, the backlog and the reserve fit the file limit."""
    room = soft_limit - fd_reserve(settings) - BACKLOG
    cap = max(1, min(settings.max_connections, room))
    if cap < settings.max_connections:
        log.warning(
            "MLA_MAX_CONNECTIONS=%d does not fit the open-file limit %d (%d reserved, backlog %d): capped at %d",
            settings.max_connections,
            soft_limit,
            fd_reserve(settings),
            BACKLOG,
            cap,
        )
    return cap


class RefusalError(Exception):
    """Raised in a parser callback to stop the parser (feed_data raises HttpParserCallbackError); `data_received` answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Edge:
    """What the connections of one server share: the limits, the open connections, and those waiting
    for headers in the order they began to wait. That order is both the order of their deadlines and
    the order of eviction, so one timer (for the front) serves them all and eviction takes the front."""

    def __init__(self, header_timeout: float, max_header_bytes: int, max_headers: int, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_connections = max_connections
        self.open: set[EdgeProtocol] = set()
        self.waiting: dict[EdgeProtocol, float] = {}  # connection -> loop time it began to wait; oldest first
        self.timer: asyncio.TimerHandle | None = None

    def wait(self, conn: EdgeProtocol) -> None:
        """`conn` waits for headers from now on, unless it already does."""
        if conn not in self.waiting:
            self.waiting[conn] = conn.loop.time()
            if self.timer is None:
                self.timer = conn.loop.call_at(self.waiting[conn] + self.header_timeout, self._expire, conn.loop)

    def forget(self, conn: EdgeProtocol) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)

    def oldest_idle(self) -> EdgeProtocol | None:
        """The connection waiting longest for headers with no request of its own in progress."""
        return next((c for c in self.waiting if c.cycle is None or c.cycle.response_complete), None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer 408 to every connection past its deadline; then sleep until the next one's."""
        self.timer = None
        now = loop.time()
        while self.waiting:
            conn, since = next(iter(self.waiting.items()))
            if since + self.header_timeout > now:
                self.timer = loop.call_at(since + self.header_timeout, self._expire, loop)
                return
            del self.waiting[conn]
            conn.refuse(408, "request_timeout", f"request headers not received within {self.header_timeout:g} s")


if httptools is not None:

    class EdgeProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, bounded: see the module's docstring. Bind it to an `Edge` with `protocol_class`."""

        edge: ClassVar[Edge]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_bytes = 0  # URL plus header names and values of the request under way
            self.head_fields = 0
            # Bytes fed while a head was under way without the parser reporting any of it: httptools
            # holds a header it has not finished in a buffer of its own, unseen by on_header.
            self.unreported = 0
            self.reported = False  # the parser reported part of a head during the current feed
            self.in_message = False  # between on_message_begin and on_message_complete
            self.refusal: RefusalError | None = None  # what stopped the parser, to answer
            self.refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            edge = self.edge
            if len(edge.open) >= edge.max_connections:
                victim = edge.oldest_idle()
                if victim is None:
                    self.refuse(503, "overloaded", "too many open connections; try again later")
                    return
                victim.refuse(503, "overloaded", "too many open connections; closed the one waiting longest for its headers")
            edge.open.add(self)
            edge.wait(self)  # the deadline of the first request's headers runs from now

        def connection_lost(self, exc: Exception | None) -> None:
            self.edge.forget(self)
            super().connection_lost(exc)

        def handle_websocket_upgrade(self) -> None:
            self.edge.forget(self)  # the transport passes to a websocket protocol, which reports its own loss
            super().handle_websocket_upgrade()

        def data_received(self, data: bytes) -> None:
            """uvicorn's, with a refusal raised in a callback told apart from a malformed request."""
            if self.refused:  # answered and closing: the rest is not read
                return
            self._unset_keepalive_if_required()
            if not self.in_message:
                self.edge.wait(self)  # the first byte of a request (even a stray CRLF) starts its deadline
            self.reported = False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self.refusal is not None:
                    self.refuse(self.refusal.status, self.refusal.code, self.refusal.message)
                    return
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            if self.reported or self not in self.edge.waiting:
                self.unreported = 0
                return
            # The parser's own buffer can hold at most `unreported` bytes plus one read (256 KiB).
            self.unreported += len(data)
            if self.head_bytes + self.unreported > self.edge.max_header_bytes:
                self.refuse(431, "headers_too_large", f"request line and headers over {self.edge.max_header_bytes} bytes")

        def send_400_response(self, msg: str) -> None:
            self.refuse(400, "bad_request", msg)

        # Parser callbacks
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.in_message = self.reported = True
            self.head_bytes = self.head_fields = self.unreported = 0
            self.edge.wait(self)  # pipelined: a new head arrives while the last response is under way

        def on_url(self, url: bytes) -> None:
            self._count(len(url), 0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value), 1)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self.reported = True
            self.edge.waiting.pop(self, None)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.in_message = False
            super().on_message_complete()

        def _count(self, nbytes: int, fields: int) -> None:
            self.reported = True
            self.head_bytes += nbytes
            self.head_fields += fields
            limit = self.edge.max_header_bytes
            if self.head_bytes > limit:
                self.refusal = RefusalError(431, "headers_too_large", f"request line and headers over {limit} bytes")
            elif self.head_fields > self.edge.max_headers:
                self.refusal = RefusalError(431, "headers_too_large", f"more than {self.edge.max_headers} header fields")
            if self.refusal is not None:
                raise self.refusal

        def refuse(self, status: int, code: str, message: str) -> None:
            """Answer `status` with a JSON error, close, and read no more. A response under way
            (pipelining) is not cut: it goes out, then the connection closes without this answer."""
            if self.refused:
                return
            self.refused = True
            self.edge.forget(self)  # counted out now: the descriptor goes when the loop closes it, next iteration
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False
                self.flow.pause_reading()
                return
            if status != 400:  # debug: an attacker chooses how often this happens
                log.debug("HTTP %d to %s: %s", status, self.client, message)
            body = json.dumps(error_body(code, message)).encode()
            head = [STATUS_LINE[status]]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # a peer that reads nothing must not keep the descriptor
            else:
                self.transport.close()

    def protocol_class(edge: Edge) -> type[asyncio.Protocol]:
        """EdgeProtocol bound to `edge`: the class uvicorn instantiates per connection."""
        return type("BoundEdgeProtocol", (EdgeProtocol,), {"edge": edge})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config arguments for the edge: the bounded protocol, or h11 with its header bound where httptools is missing."""
    cap = connection_cap(settings, raise_fd_limit())
    if httptools is None:  # h11 bounds a head's bytes, no more: no count, no deadline, no cap
        log.warning("httptools is missing: uvicorn runs h11, which bounds header bytes only")
        return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes, "backlog": BACKLOG}
    edge = Edge(settings.header_timeout_seconds, settings.max_header_bytes, settings.max_headers, cap)
    return {"http": protocol_class(edge), "backlog": BACKLOG}
