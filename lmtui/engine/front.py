"""The router's fast HTTP/1.1 front: plain OpenAI requests served without ``aiohttp.web``.

Measured on the project's 2-core machine, ``aiohttp.web``'s request and response machinery
was the largest single cost of a proxied request: a bare ``aiohttp.web`` proxy
(``bench/upstream_client.py``) used ~46 µs of CPU per request, and a throwaway prototype of
the same proxy on a bare asyncio protocol (not kept in ``bench/``) ~22 µs. Through lmtui at
32 clients (``bench/router_overhead.py``, proxy CPU per request, with and without
``--via-aiohttp``): ~80-90 µs through ``aiohttp.web``, ~53-64 µs through this front. So the
listening socket belongs to this module, which serves the requests the bot actually sends
and hands every other connection to ``aiohttp.web``, intact:

- **Served here:** ``POST /v1/chat/completions``, ``/v1/completions`` and
  ``/v1/embeddings`` over HTTP/1.1 with a ``Content-Length`` body (what the ``openai``
  clients, ``curl`` and ``requests`` send), keep-alive and pipelined.
- **Handed to aiohttp.web**, the moment a request on the connection is anything else: any
  other method, path or query string (``GET /v1/models``, ``/metrics``, the control API),
  HTTP/1.0, a chunked or ``Expect: 100-continue`` body, an ``Upgrade``, a repeated
  ``Content-Length``, a header line that does not parse, or a head over 64 KiB. The bytes
  received so far are replayed into an ``aiohttp`` protocol that then owns the connection
  for the rest of its life, so every edge case of HTTP gets aiohttp's full parser and
  answer (400, 431, 100 Continue, ...). The router's three paths are mounted on aiohttp as
  well and run the same code (:class:`~lmtui.engine.exchange.Exchange`).

Behaviour matches the aiohttp path: the bearer key is checked before the body is used; a
body over ``[router] max_body_bytes`` gets 413 and is dropped as it arrives, never kept in
memory (over four times the limit, the connection closes after the 413); a client that
disconnects cancels its request, so a queued request leaves the queue at once; a
connection idle for 75 s, or one that dribbles an incomplete request for that long, is
closed; a client that half-closes gets the answers to what it sent, then the connection
closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

from lmtui.engine.errors import JSON_HEADERS, error_body

if TYPE_CHECKING:
    from lmtui.engine.router import Router

log = logging.getLogger(__name__)

HOT_PATHS = {
    b"/v1/chat/completions": "/v1/chat/completions",
    b"/v1/completions": "/v1/completions",
    b"/v1/embeddings": "/v1/embeddings",
}
#: A request head larger than this goes to aiohttp, which answers it (431 or 400).
MAX_HEAD = 64 * 1024
#: Idle keep-alive connections (and requests that never complete) are closed after this,
#: unless ``[router] idle_timeout`` says otherwise.
IDLE_TIMEOUT_S = 75.0
_PASS_ON = (b"transfer-encoding", b"expect", b"upgrade")
_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 413: b"Payload Too Large", 415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}  # fmt: skip


class _Clock:
    """The ``Date`` header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True).encode()
        return cls.value


def _head(status: int, headers: Mapping[str, str], extra: bytes) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s\r\nDate: %s\r\n" % (status, _REASONS.get(status, b"-"), _Clock.date())
    ]
    for k, v in headers.items():
        lines.append(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")))
    lines.append(extra)
    return b"".join(lines)


class FrontServer:
    """The protocol factory for the listening socket, and the connections it made."""

    def __init__(
        self,
        router: Router,
        fallback: Callable[[], asyncio.Protocol],
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.router = router
        #: Idle keep-alive connections (and requests that never complete) close after this;
        #: ``[router] idle_timeout``, the same bound aiohttp's side is given.
        self.idle_timeout_s = idle_timeout_s
        #: Makes an ``aiohttp.web`` protocol (``AppRunner.server``) for a handed-on connection.
        self.fallback = fallback
        self.connections: set[FastFront] = set()
        #: Requests served here, and connections handed to aiohttp (read by the tests).
        self.served = 0
        self.handed_on = 0

    def __call__(self) -> FastFront:
        return FastFront(self)

    async def shutdown(self, timeout: float) -> None:
        """Let requests in progress finish for up to ``timeout`` s, then cancel them; close
        every connection this front still owns."""
        tasks = [c.task for c in self.connections if c.task is not None]
        for c in list(self.connections):
            c.close_when_done = True
            if c.task is None:
                c.transport.close()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for c in list(self.connections):
            c.transport.close()


class FastFront(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.router = server.router
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.close_when_done = False
        self._idle: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._lost = False
        #: Reading stops while a request runs and this much more is buffered (a client
        #: pipelining without limit must not fill lmtui's memory).
        self._read_limit = self.router.max_body_bytes + MAX_HEAD
        self.reading_paused = False
        #: Bytes still to drop: the rest of a refused (too large) body.
        self._discard = 0
        #: The client half-closed: answer what it sent, then close.
        self._eof = False
        #: The connection now belongs to aiohttp: this object must not touch it again.
        self._handed_on = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._discard:
            n = min(len(data), self._discard)
            self._discard -= n
            if n == len(data):
                return
            data = data[n:]
        self.buf += data
        if self.task is None:
            self._next()
        if not self._handed_on:
            self._flow()

    def _flow(self) -> None:
        """Stop reading while more than ``_read_limit`` bytes wait; read again below it."""
        if len(self.buf) > self._read_limit:
            if not self.reading_paused and not self._lost:
                self.reading_paused = True
                self.transport.pause_reading()
        elif self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        # The client finished sending: answer what it sent (pipelined requests included),
        # then close.
        self._eof = True
        if self.task is None:
            self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None:
            self.task.cancel()  # the client left: its request must not hold a slot
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    # -- requests -----------------------------------------------------------------------

    def _next(self) -> None:
        """Start the request at the head of the buffer if it is complete."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            # A head too large, or one ended by bare newlines (a hand-typed request): not
            # ours to judge, aiohttp answers it.
            if len(buf) > MAX_HEAD or b"\n\n" in buf:
                self._hand_on()
            return
        head = bytes(buf[:end])
        first, _, rest = head.partition(b"\r\n")
        parts = first.split(b" ")
        path = HOT_PATHS.get(parts[1]) if len(parts) == 3 else None
        if path is None or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return self._hand_on()
        length = -1
        auth = ""
        close = False
        host = origin = ctype = None
        for line in rest.split(b"\r\n") if rest else ():
            name, sep, value = line.partition(b":")
            if not sep or not name or name.rstrip() != name or name[:1] in b" \t":
                return self._hand_on()
            name = name.lower()
            if name == b"content-length":
                value = value.strip()
                if length >= 0 or not value.isdigit():
                    return self._hand_on()
                length = int(value)
            elif name == b"authorization":
                auth = value.strip().decode("latin-1")
            elif name == b"host":
                if host is not None:  # two Host headers: aiohttp's parser judges it
                    return self._hand_on()
                host = value.strip().decode("latin-1")
            elif name == b"origin":
                origin = value.strip().decode("latin-1")
            elif name == b"content-type":
                ctype = value.strip().decode("latin-1")
            elif name == b"connection":
                close = b"close" in value.lower()
            elif name in _PASS_ON:
                return self._hand_on()
        if length < 0:
            return self._hand_on()
        if length > self.router.max_body_bytes:
            # Refused without reading the body into memory. Its bytes are dropped as they
            # come, so the client can finish sending, read the 413 and reuse the connection
            # (closing at once could reset it before it reads the answer). A body far over
            # the limit is not worth the wait: that connection closes after the 413.
            total = end + 4 + length
            dropped = min(len(buf), total)
            del buf[:dropped]
            self._discard = total - dropped
            if length > 4 * self.router.max_body_bytes:
                self.close_when_done = True
            self._start(self._refuse(413, self.router.too_large))
            return
        total = end + 4 + length
        if len(buf) < total:
            return
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        self.close_when_done |= close
        self._start(self._serve(path, body, auth, host, origin, ctype))

    def _start(self, coro: object) -> None:
        self.task = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.task.add_done_callback(self._done)

    async def _serve(
        self,
        path: str,
        body: bytes,
        auth: str,
        host: str | None,
        origin: str | None,
        ctype: str | None,
    ) -> None:
        self.server.served += 1
        t0 = self.router.clock()
        reply = _Reply(self)
        try:
            if await self.router.admit(reply, self.transport, host, origin, ctype, auth):
                await self.router.proxy(reply, path, body, t0)
        except ConnectionResetError:
            pass  # the client left mid-answer; the router has recorded it
        except Exception:
            log.exception("router: request failed")
            if reply.streaming or reply.sent:
                self.close_when_done = True  # the answer is incomplete: say so by closing
            else:
                await reply.send(
                    500,
                    error_body("internal error in lmtui", "server_error", "internal_error"),
                    JSON_HEADERS,
                )

    async def _refuse(self, status: int, error: tuple[str, str, str]) -> None:
        await _Reply(self).send(status, error_body(*error), JSON_HEADERS)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Only a failure to send the 500 itself gets here: the client is gone.
            log.debug("router: could not answer a failed request: %r", exc)
            self.close_when_done = True
        if self._lost:
            return
        if self.close_when_done:
            self.transport.close()
            return
        self._idle_since = self.loop.time()
        if self.buf:
            self._next()  # a pipelined request already waiting
            if self._handed_on:
                return
        if self._eof and self.task is None:
            self.transport.close()  # nothing more will come
            return
        self._flow()

    def _hand_on(self) -> None:
        """Give this connection, and the bytes not yet consumed, to aiohttp.web."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._handed_on = True
        self.server.connections.discard(self)
        self.server.handed_on += 1
        data, self.buf = bytes(self.buf), bytearray()
        proto = self.server.fallback()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if self._paused:
            proto.pause_writing()
        if data:
            proto.data_received(data)
        if self._eof:
            proto.eof_received()

    def _arm_idle(self) -> None:
        """One timer per connection, not one per request: each request only stamps
        ``_idle_since``; when the timer fires it closes the connection if it has been idle
        long enough, else sleeps again until it would have been."""
        self._idle_since = self.loop.time()
        self._idle = self.loop.call_later(self.server.idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self._lost:
            return
        left = self._idle_since + self.server.idle_timeout_s - self.loop.time()
        if self.task is None and left <= 0:
            self.transport.close()
            return
        # Busy, or active since the timer was set: look again when it could be idle.
        delay = self.server.idle_timeout_s if self.task is not None else left
        self._idle = self.loop.call_later(delay, self._on_idle)

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._lost or self.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write."""
        if self._paused and not self._lost:
            self._drained = self.loop.create_future()
            await self._drained
        if self._lost:
            raise ConnectionResetError("the client closed the connection")

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None


class _Reply:
    """The :class:`~lmtui.engine.exchange.Exchange` of one request on a fast connection."""

    __slots__ = ("conn", "sent", "streaming")

    def __init__(self, conn: FastFront) -> None:
        self.conn = conn
        self.streaming = False
        self.sent = False

    def _close_header(self) -> bytes:
        return b"Connection: close\r\n\r\n" if self.conn.close_when_done else b"\r\n"

    async def send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.sent = True
        extra = b"Content-Length: %d\r\n%s" % (len(body), self._close_header())
        self.conn.write(_head(status, headers, extra) + body)

    async def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        self.streaming = True
        extra = b"Transfer-Encoding: chunked\r\n" + self._close_header()
        self.conn.write(_head(status, headers, extra))

    async def write(self, chunk: bytes) -> None:
        if chunk:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await self.conn.drain()

    async def end(self, chunk: bytes = b"") -> None:
        if chunk:
            self.conn.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(b"0\r\n\r\n")
        self.sent = True
