"""The router's fast HTTP/1.1 front: plain OpenAI requests served without ``aiohttp.web``.

Measured on the project's 2-core machine, ``aiohttp.web``'s request and response machinery
was the largest single cost of a proxied request: a bare ``aiohttp.web`` proxy
(``bench/upstream_client.py``) used ~46 µs of CPU per request, and a throwaway prototype of
the same proxy on a bare asyncio protocol (not kept in ``bench/``) ~22 µs. Through lmtui at
32 clients (``bench/router_overhead.py``, proxy CPU per request, with and without
``--via-aiohttp``): ~80-90 µs through ``aiohttp.web``, ~53-64 µs through this front. So the
listening socket belongs to this module, which serves the requests the bot actually sends
and hands every other connection to ``aiohttp.web``, intact.

Request heads are parsed by llhttp (Node.js's strict HTTP/1.1 parser, through
``httptools``), the same parser aiohttp's own C extension runs in its strict request mode:
a bare LF or CR, a NUL or any control character in a header value, a header name that is
not a token, obs-fold, ``Content-Length`` with ``Transfer-Encoding`` or twice — each is a
parse error here, and a request this front cannot parse is handed to aiohttp, which
refuses it with its own 400. So both paths give the same answer to the same bytes.

- **Served here:** the paths the handler names (``POST /v1/chat/completions``,
  ``/v1/completions``, ``/v1/embeddings``) over HTTP/1.1 with a ``Content-Length`` body
  (what the ``openai`` clients, ``curl`` and ``requests`` send), keep-alive and pipelined.
- **Handed to aiohttp.web**, the moment a request on the connection is anything else: any
  other method, path or query string (``GET /v1/models``, ``/metrics``, the control API),
  HTTP/1.0, a chunked or ``Expect: 100-continue`` body, an ``Upgrade``, a head llhttp
  refuses, a repeated header that aiohttp allows once (``Host``, ``Content-Type``, ...), a
  header name or value over aiohttp's 8190 bytes or more than its 128 headers, or a head
  over 64 KiB. The bytes received so far are replayed into an ``aiohttp`` protocol that
  then owns the connection for the rest of its life, so every edge case of HTTP gets
  aiohttp's full parser and answer (400, 431, 100 Continue, ...).

Bounds (``[router]`` keys, :class:`~lmtui.http.limits.ServerLimits`): a head must arrive
within ``head_timeout`` of its first byte and a body within ``body_timeout`` of its head
(else 408 and the connection closes); an idle keep-alive connection closes after
``idle_timeout``; a body over ``max_body_bytes`` gets 413 and is dropped as it arrives,
never kept in memory (over four times the limit, the connection closes after the 413);
reading stops while more than a body and a head are buffered; past
``max_connections`` open connections in all, or ``max_connections_per_address`` from one
address (aiohttp's connections counted too), a new connection gets a 503 and is closed. A
client that disconnects cancels its request, so a queued request leaves the queue at once.
The end of a client's sending (its FIN) counts as leaving, as it does on aiohttp's side and
in nginx: a client that gives up closes its socket, and a FIN is all the front sees of it
until it writes; a request whose client left must not hold a queue place or a slot, nor be
generated for nobody. (A client that only half-closes, expecting answers, is rare: it
loses its answers, on both paths alike.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from email.utils import formatdate
from typing import Any, Protocol, cast

import httptools

from lmtui.http.limits import MAX_FIELD, MAX_HEAD, MAX_HEADERS, ServerLimits

__all__ = ["FastFront", "FrontServer", "Handler", "Reply"]

log = logging.getLogger(__name__)

_JSON = {"Content-Type": "application/json"}
_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 408: b"Request Timeout", 413: b"Payload Too Large",
    415: b"Unsupported Media Type", 429: b"Too Many Requests",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}  # fmt: skip
#: Headers whose presence sends a request to aiohttp. ``x-lmtui-via`` marks a request
#: another lmtui passed on to this one as its peer: the router reads it on aiohttp's path
#: (``lmtui/engine/peers.py``), so the fast path never looks for it.
_PASS_ON = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"x-lmtui-via"))
#: Headers aiohttp's strict request parser allows once (RFC 9110 singletons): a second
#: copy is its 400, so such a request goes to aiohttp. One bit each.
_SINGLETONS = {
    name: 1 << i
    for i, name in enumerate(
        (b"content-location", b"content-range", b"content-type", b"etag", b"host",
         b"max-forwards", b"server", b"user-agent")
    )
}  # fmt: skip
# Where a connection is between requests: waiting for one, inside a head, inside a body.
_IDLE, _HEAD, _BODY = range(3)


class Handler(Protocol):
    """What the front needs from the router behind it."""

    #: Largest request body accepted (413 above it).
    max_body_bytes: int
    #: Lower-case names of further headers whose values ``serve`` is given (the first copy
    #: of each), beside the ones the front reads itself.
    captured_headers: frozenset[bytes]

    def serve(
        self,
        reply: Reply,
        path: str,
        body: bytes,
        auth: str,
        host: str | None,
        origin: str | None,
        ctype: str | None,
        peer: str | None,
        extra: Mapping[bytes, str] | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Answer one complete request through ``reply`` (checks, auth and all); ``extra``:
        the ``captured_headers`` it had (None when none)."""
        ...

    def error_body(self, status: int, message: str, code: str, path: str | None = None) -> bytes:
        """The API's error JSON for an answer the front gives itself (408, 413, 500, 503),
        in the shape of ``path``'s API when the request's path is known."""
        ...


class _Fallback(Protocol):
    """``aiohttp.web``'s ``Server`` (``AppRunner.server``): makes the protocol a handed-on
    connection gets, and is told when one of its connections closes."""

    def __call__(self) -> asyncio.Protocol: ...

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None: ...


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
        handler: Handler,
        fallback: _Fallback,
        paths: Mapping[bytes, str],
        limits: ServerLimits | None = None,
    ) -> None:
        self.handler = handler
        #: Request targets served here, and the path name each is served as.
        self.paths = paths
        self.limits = limits or ServerLimits()
        #: Makes an ``aiohttp.web`` protocol for a handed-on connection.
        self.fallback = fallback
        self.connections: set[FastFront] = set()
        #: Client connections open, on both paths, in all and by address.
        self.open = 0
        self.by_address: dict[str, int] = {}
        #: aiohttp's protocol of each handed-on connection, and its client's address.
        self._handed: dict[int, str] = {}
        # aiohttp tells its Server when a connection closes; hear it too, so a handed-on
        # connection is counted until it really closes.
        told = fallback.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            told(handler, exc)
            addr = self._handed.pop(id(handler), None)
            if addr is not None:
                self.release(addr)

        fallback.connection_lost = connection_lost  # type: ignore[method-assign]
        #: Requests served here, connections handed to aiohttp, connections refused for a
        #: limit (read by the tests and the metrics).
        self.served = 0
        self.handed_on = 0
        self.refused = 0

    def __call__(self) -> FastFront:
        return FastFront(self)

    # -- connection limits --------------------------------------------------------------

    def admit(self, addr: str) -> bool:
        """Count a new connection from ``addr``; False (nothing counted) over a limit."""
        n = self.by_address.get(addr, 0)
        lim = self.limits
        if self.open >= lim.max_connections or n >= lim.max_connections_per_address:
            self.refused += 1
            return False
        self.open += 1
        self.by_address[addr] = n + 1
        return True

    def release(self, addr: str) -> None:
        self.open -= 1
        n = self.by_address[addr] - 1
        if n:
            self.by_address[addr] = n
        else:
            del self.by_address[addr]

    def handed(self, proto: asyncio.Protocol, addr: str) -> None:
        self._handed[id(proto)] = addr

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
        self.handler = server.handler
        self._captured = server.handler.captured_headers
        self.parser = httptools.HttpRequestParser(self)
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.close_when_done = False
        self.addr: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Where the connection is (idle, inside a head, inside a body) and since when.
        self._phase = _IDLE
        self._since = 0.0
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._lost = False
        #: Reading stops while a request runs and this much more is buffered (a client
        #: pipelining without limit must not fill lmtui's memory).
        self._read_limit = self.handler.max_body_bytes + MAX_HEAD
        self.reading_paused = False
        #: Bytes still to drop: the rest of a refused (too large) body.
        self._discard = 0
        #: The client sent its FIN: it has left.
        self._eof = False
        #: The connection now belongs to aiohttp: this object must not touch it again.
        self._handed_on = False
        #: The head parsed and waiting for its body: (head length, body length, path, ...).
        self._pending: (
            tuple[int, int, str, str, str | None, str | None, str | None, dict[bytes, str] | None]
            | None
        )
        self._pending = None
        self._reset_head()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if peer else ""
        if not self.server.admit(addr):
            self._lost = True  # nothing of this connection is counted or served
            body = self.handler.error_body(
                503, "too many connections; try again shortly", "too_many_connections"
            )
            transport.write(  # type: ignore[attr-defined]
                _head(
                    503,
                    _JSON,
                    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body),
                )
            )
            transport.close()
            return
        self.addr = addr
        self.server.connections.add(self)
        self._since = self.loop.time()
        self._timer = self.loop.call_later(self.server.limits.idle_timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self._lost:
            return
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
        # The client left (see the module's docstring): its request is cancelled at once
        # (connection_lost, which follows, cancels it too) and the connection closes.
        self._eof = True
        if self.task is not None:
            self.task.cancel()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.addr is None:  # refused at connection_made: never counted
            return
        if not self._handed_on:
            self.server.release(self.addr)
        self._lost = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            self.task.cancel()  # the client left: its request must not hold a slot
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    # -- llhttp's callbacks (httptools), during feed_data ----------------------------------

    def _reset_head(self) -> None:
        self._url = b""
        self._length = -1
        self._auth = ""
        self._host: str | None = None
        self._origin: str | None = None
        self._ctype: str | None = None
        self._extra: dict[bytes, str] | None = None
        self._ours = True
        self._count = 0
        self._seen = 0
        self._keep = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD or self._count > MAX_HEADERS:
            self._ours = False
            return
        name = name.lower()
        bit = _SINGLETONS.get(name)
        if bit is not None:
            if self._seen & bit:  # a second copy: aiohttp's parser refuses it
                self._ours = False
            self._seen |= bit
        if name == b"content-length":
            self._length = int(value)  # llhttp has checked it: digits, once
        elif name == b"authorization":
            self._auth = value.rstrip(b" \t").decode("latin-1")
        elif name == b"host":
            self._host = value.rstrip(b" \t").decode("latin-1")
        elif name == b"origin":
            self._origin = value.rstrip(b" \t").decode("latin-1")
        elif name == b"content-type":
            self._ctype = value.rstrip(b" \t").decode("latin-1")
        elif name in _PASS_ON:
            self._ours = False
        elif name in self._captured:
            if self._extra is None:
                self._extra = {}
            self._extra.setdefault(name, value.rstrip(b" \t").decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._keep = self.parser.should_keep_alive()

    # -- requests -----------------------------------------------------------------------

    def _next(self) -> None:
        """Start the request at the head of the buffer if it is complete."""
        buf = self.buf
        pending = self._pending
        if pending is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # A head too large, or one ended by bare newlines (a hand-typed request):
                # not ours to judge, aiohttp answers it.
                if len(buf) > MAX_HEAD or b"\n\n" in buf:
                    self._hand_on()
                elif buf and self._phase == _IDLE:
                    self._enter(_HEAD)
                return
            if end + 4 > MAX_HEAD:
                return self._hand_on()
            self._reset_head()
            try:
                self.parser.feed_data(bytes(buf[: end + 4]))
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                return self._hand_on()
            path = self.server.paths.get(self._url)
            length = self._length
            if (
                path is None
                or not self._ours
                or length < 0
                or self.parser.get_method() != b"POST"
                or self.parser.get_http_version() != "1.1"
            ):
                return self._hand_on()
            if length > self.handler.max_body_bytes:
                # Refused without reading the body into memory. Its bytes are dropped as
                # they come, so the client can finish sending, read the 413 and reuse the
                # connection (closing at once could reset it before it reads the answer).
                # A body far over the limit is not worth the wait: that connection closes
                # after the 413. The parser expects that body: a new one for what follows.
                total = end + 4 + length
                dropped = min(len(buf), total)
                del buf[:dropped]
                self._discard = total - dropped
                self.parser = httptools.HttpRequestParser(self)
                if length > 4 * self.handler.max_body_bytes or not self._keep:
                    self.close_when_done = True
                message = f"Request body larger than {self.handler.max_body_bytes} bytes"
                self._phase = _IDLE
                self._refuse(
                    413, f"{message} ([router] max_body_bytes).", "request_too_large", path
                )
                return
            pending = self._pending = (
                end + 4,
                length,
                path,
                self._auth,
                self._host,
                self._origin,
                self._ctype,
                self._extra,
            )
            if not self._keep:
                self.close_when_done = True
        start, length, path, auth, host, origin, ctype, extra = pending
        total = start + length
        if len(buf) < total:
            if self._phase != _BODY:
                self._enter(_BODY)
            return
        body = bytes(buf[start:total])
        del buf[:total]
        self._pending = None
        self._phase = _IDLE
        if length:
            self.parser.feed_data(body)  # llhttp counts the body off: the message ends
        reply = _Reply(self)
        self.server.served += 1
        coro = self.handler.serve(reply, path, body, auth, host, origin, ctype, self.addr, extra)
        self._start(self._guarded(coro, reply, path))

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self.task = self.loop.create_task(coro)
        self.task.add_done_callback(self._done)

    async def _guarded(self, coro: Coroutine[Any, Any, None], reply: _Reply, path: str) -> None:
        try:
            await coro
        except ConnectionResetError:
            pass  # the client left mid-answer; the router has recorded it
        except Exception:
            log.exception("router: request failed")
            if reply.streaming or reply.sent:
                self.close_when_done = True  # the answer is incomplete: say so by closing
            else:
                body = self.handler.error_body(
                    500, "internal error in lmtui", "internal_error", path
                )
                await reply.send(500, body, _JSON)

    def _refuse(self, status: int, message: str, code: str, path: str | None = None) -> None:
        """Answer ``status`` with the API's error JSON, as this connection's request."""
        body = self.handler.error_body(status, message, code, path)
        self._start(_Reply(self).send(status, body, _JSON))

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
        self._since = self.loop.time()
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handed_on = True
        self.server.connections.discard(self)
        self.server.handed_on += 1
        data, self.buf = bytes(self.buf), bytearray()
        proto = self.server.fallback()
        assert self.addr is not None
        self.server.handed(proto, self.addr)
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

    # -- time limits --------------------------------------------------------------------

    def _enter(self, phase: int) -> None:
        """A head (or a body) has begun to arrive: it has its own, shorter, time limit. The
        one timer is moved earlier only if it would fire after that limit."""
        self._phase = phase
        self._since = now = self.loop.time()
        lim = self.server.limits
        due = now + (lim.head_timeout if phase == _HEAD else lim.body_timeout)
        if self._timer is None or self._timer.when() > due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        """One timer per connection, not one per request: each request only stamps
        ``_since``; when the timer fires it acts if the limit of the phase the connection is
        in has passed, else sleeps again until it would have."""
        self._timer = None
        if self._lost:
            return
        lim = self.server.limits
        now = self.loop.time()
        if self.task is not None:  # busy: no limit on how long an answer takes
            self._timer = self.loop.call_later(lim.idle_timeout, self._on_timer)
            return
        phase = self._phase
        limit = (
            lim.head_timeout
            if phase == _HEAD
            else lim.body_timeout
            if phase == _BODY
            else lim.idle_timeout
        )
        left = self._since + limit - now
        if left > 0:
            self._timer = self.loop.call_later(left, self._on_timer)
        elif phase == _IDLE:
            self.transport.close()
        else:
            what = "head" if phase == _HEAD else "body"
            self.close_when_done = True
            self._pending = None
            self.buf.clear()
            message = f"the request {what} did not arrive within {limit:g} s"
            self._refuse(408, message, "request_timeout")

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


class Reply(Protocol):
    """One request's answer (:class:`~lmtui.engine.exchange.Exchange`'s shape)."""

    streaming: bool
    sent: bool

    async def send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None: ...
    async def start_stream(self, status: int, headers: Mapping[str, str]) -> None: ...
    async def write(self, chunk: bytes) -> None: ...
    async def end(self, chunk: bytes = b"") -> None: ...


class _Reply:
    """The answer of one request on a fast connection."""

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
