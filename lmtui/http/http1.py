"""A lean HTTP/1.1 client for lmtui's requests to its nodes: the router's and the polls'.

Why not ``aiohttp.ClientSession``: it builds request/response objects, a StreamReader, and
runs cookie, redirect and tracing machinery that a proxy to an OpenAI-style server never
uses. Measured with ``bench/upstream_client.py`` (bare aiohttp.web proxy on uvloop, nginx
upstream, wrk -c32, 2 cores): 10.5–11.0k req/s and ~92 µs proxy CPU per request with
aiohttp's client, 21.5–22.4k req/s and ~45 µs with this one (streams: 9.2–9.8k vs 16.5–17k).

This client does only what the router needs: one ``asyncio.Protocol`` per connection and
a keep-alive pool per node. Answers are parsed by llhttp (Node.js's strict HTTP/1.1
parser, through ``httptools``; ~1 µs a head): ``Content-Length``, chunked and read-to-EOF
bodies, interim 1xx answers skipped (at most ``MAX_INTERIM``). What a hand-written parser
had let through is a failed answer here — a bare LF inside a header value (which the
front would have written out as a header of its own: response splitting), a control
character, obs-fold, ``Content-Length`` with ``Transfer-Encoding`` — and so is a head
over 64 KiB or 128 headers.

Shape::

    pool = UpstreamPool("http://10.0.0.5:1234")
    resp = await pool.request("POST", "/v1/chat/completions", body, headers)
    data = await resp.read()                 # or: piece = await resp.next_chunk() until None
    resp.release()

Exceptions: :class:`UpstreamError` for everything that goes wrong on the wire (connection
refused or reset, timeouts, a malformed answer); ``before_response`` says whether the answer's
head had arrived, i.e. whether another replica may still be tried. Plain ``http`` only:
``https`` nodes go through ``tls.py`` (aiohttp behind this interface); ``lmtui.http.pool_for``
chooses between the two.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from lmtui.http.limits import MAX_HEAD, MAX_HEADERS, MAX_INTERIM

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamResponse"]

#: Body bytes held for a slow reader before the socket stops reading (back-pressure).
HIGH_WATER = 256 * 1024
#: Request headers the pool writes itself; a caller's copies would duplicate them.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class UpstreamResponse:
    """One answer: status and headers at once, the body as it arrives.

    The connection goes back to the pool as soon as the last body byte is parsed (the body is
    held here), so :meth:`release` only has work to do for an answer abandoned half-way.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_exc",
        "_paused",
        "_size",
        "_waiter",
        "_whole",
        "headers",
        "status",
    )

    def __init__(self, conn: _Conn, status: int, headers: dict[str, str]) -> None:
        self.status = status
        #: Response headers, names in lower case; repeated headers joined with ", ".
        self.headers: Mapping[str, str] = headers
        self._conn: _Conn | None = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._exc: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._whole = False  # read() wants it all: no back-pressure then

    # -- fed by the connection -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        conn = self._conn
        if self._size > HIGH_WATER and not self._paused and not self._whole and conn is not None:
            self._paused = True
            conn.pause_reading()

    def finish(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def fail(self, exc: UpstreamError) -> None:
        if not self._done:
            self._exc = exc
            self._done = True
            self._conn = None
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the caller's side -----------------------------------------------------------------

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole body (chunked encoding removed); :class:`UpstreamError` if it breaks off
        or grows past ``max_bytes`` (the connection is then closed, not reused)."""
        self._whole = True
        while True:
            if max_bytes is not None and self._size > max_bytes:
                self._chunks.clear()
                self._size = 0
                self.release()
                raise UpstreamError(f"body larger than {max_bytes} bytes", before_response=False)
            if self._done:
                break
            await self._wait()
        if self._exc is not None:
            raise self._exc
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        return data

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call, or None at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._size = 0
                if self._paused:
                    self._paused = False
                    if self._conn is not None:
                        self._conn.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self._done:
                return None
            await self._wait()

    @property
    def at_end(self) -> bool:
        """True when the whole body has arrived and been handed out: no chunk will follow.
        Lets a proxy send its last piece together with the end of its own answer."""
        return self._done and self._exc is None and not self._chunks

    def release(self) -> None:
        """Hand the connection back: reused if the body was read to the end, else closed."""
        conn = self._conn
        if conn is not None and not self._done:
            self._conn = None
            self._done = True
            conn.abort(UpstreamError("response released before its end", before_response=False))

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:  # done meanwhile
            return
        if self._paused:  # read() drains nothing until the end: let the body in
            self._paused = False
            conn.resume_reading()
        loop = conn.loop
        self._waiter = w = loop.create_future()
        timeout = conn.pool.read_timeout
        timer = (
            loop.call_later(timeout, conn.on_timeout, conn.requests)
            if timeout is not None
            else None
        )
        try:
            await w
        except asyncio.CancelledError:
            # The caller gave up mid-body: the rest of the body would arrive on a connection
            # nobody reads, so it cannot be reused.
            self.release()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one node (``http://host:port[/prefix]``).

    At most ``max_connections`` at once; further requests wait for one to come free. Idle
    connections are reused last-in first-out, so the few that stay busy stay warm and the rest
    age out on the server's keep-alive timeout (uvicorn's default is 5 s) instead of all
    being kept barely alive. ``read_timeout`` bounds each wait for bytes from the server
    (None: no limit); a generation can run for minutes, hence the 900 s default.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 256,
        connect_timeout: float = 10.0,
        read_timeout: float | None = 900.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"UpstreamPool speaks plain http://host:port only, not {base_url!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._prefix = parts.path.rstrip("/")
        netloc = parts.netloc.rpartition("@")[2]  # no userinfo in the Host header
        self._host_line = f"Host: {netloc}\r\n"
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._count = 0  # open or opening connections, the number the limit applies to
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._closed = False

    # -- requests ------------------------------------------------------------------------

    async def request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """Send one request; return once the answer's status line and headers are in."""
        head = self._encode_head(method, path, body, headers)
        payload = head + body if len(body) < 65536 else None  # one write for small bodies
        fresh = False
        while True:
            conn = await self._acquire(fresh)
            reused = conn.requests > 0
            fut: asyncio.Future[UpstreamResponse] = conn.loop.create_future()
            conn.send(payload or head, None if payload else body, fut, method == "HEAD")
            timer = (
                conn.loop.call_later(self.read_timeout, conn.on_timeout, conn.requests)
                if self.read_timeout is not None
                else None
            )
            try:
                return await fut
            except UpstreamError:
                # A keep-alive connection the server closed while it sat idle fails at once
                # with nothing received: the request never reached the server, so it is
                # safe to send again, once, on a new connection.
                if reused and not fresh and not conn.received and not conn.timed_out:
                    fresh = True
                    continue
                raise
            except asyncio.CancelledError:
                conn.abort(UpstreamError("request cancelled", before_response=True))
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    def _encode_head(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> bytes:
        parts = [f"{method} {self._prefix}{path} HTTP/1.1\r\n", self._host_line]
        for name, value in headers.items():
            if name.lower() in _OWN_HEADERS:
                continue
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"line break in request header {name!r}")
            parts.append(f"{name}: {value}\r\n")
        if body or method not in ("GET", "HEAD"):
            parts.append(f"Content-Length: {len(body)}\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    async def close(self) -> None:
        """Close every connection; requests waiting for one fail with :class:`UpstreamError`."""
        self._closed = True
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(UpstreamError("upstream pool closed", before_response=True))
        for conn in list(self._all):
            conn.abort(UpstreamError("upstream pool closed", before_response=False))
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost

    # -- the pool ------------------------------------------------------------------------

    async def _acquire(self, fresh: bool) -> _Conn:
        if self._closed:
            raise UpstreamError("upstream pool closed", before_response=True)
        if not fresh:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if conn.state == _IDLE:
                    return conn
        if self._count < self.max_connections:
            self._count += 1
            return await self._connect()
        fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            got = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed something just as we gave up
                left = fut.result()
                if left is None:
                    self._count -= 1
                    self._hand_slot()
                else:
                    self.put(left)
            raise
        if got is None:  # a slot came free: the waker counted it for us
            return await self._connect()
        return got

    async def _connect(self) -> _Conn:
        """Open a connection for a slot already counted in ``_count``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, loop), self.host, self.port
                )
        except BaseException as e:
            self._count -= 1
            self._hand_slot()
            if isinstance(e, (OSError, TimeoutError)):
                what = "timed out" if isinstance(e, TimeoutError) else str(e)
                raise UpstreamError(
                    f"cannot connect to {self.host}:{self.port}: {what}", before_response=True
                ) from e
            raise
        self._all.add(conn)
        return conn

    def put(self, conn: _Conn) -> None:
        """A connection finished an answer and may be reused (called by the connection)."""
        if self._closed:
            conn.abort(UpstreamError("upstream pool closed", before_response=False))
            return
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        self._idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        """A connection closed (called by the connection): free its slot, once."""
        if conn not in self._all:  # closed while still connecting: _connect frees the slot
            return
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._count -= 1
        self._hand_slot()

    def _hand_slot(self) -> None:
        if self._closed:
            return
        waiters = self._waiters
        while waiters and self._count < self.max_connections:
            w = waiters.popleft()
            if not w.done():
                self._count += 1
                w.set_result(None)
                return

    @property
    def connections(self) -> int:
        """Connections open or being opened (for tests and metrics)."""
        return self._count

    @property
    def idle_connections(self) -> int:
        return len(self._idle)


class UpstreamError(Exception):
    """The node could not be reached or broke the protocol or the connection.

    ``before_response`` is True when no answer head had arrived: the request may be sent to
    another replica. After the head it is False (the error comes from ``read``/``next_chunk``).
    """

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


# Connection states. Plain ints: compared on every data_received.
_IDLE, _HEAD, _BODY, _EOF, _CLOSED = range(5)


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp: the connection is already aborted."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection: writes requests, parses answers (llhttp, through
    ``httptools``), feeds the response."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = _IDLE
        self.requests = 0
        #: Whether any byte of the current answer arrived (a stale connection gets none).
        self.received = False
        self.timed_out = False
        self._head_fut: asyncio.Future[UpstreamResponse] | None = None
        self._resp: UpstreamResponse | None = None
        self._headers: dict[str, str] = {}
        #: Bytes received and header bytes parsed while the head was not complete.
        self._head_bytes = self._hsize = self._nheaders = 0
        self._interim = 0
        self._in_interim = False
        self._keep = True
        self._no_body = False
        self._paused = False

    # -- driven by the pool --------------------------------------------------------------

    def send(
        self,
        data: bytes,
        more: bytes | None,
        fut: asyncio.Future[UpstreamResponse],
        no_body: bool,
    ) -> None:
        assert self.transport is not None
        self.state = _HEAD
        self.requests += 1
        self.received = False
        self._head_fut = fut
        self._no_body = no_body
        self._headers = {}
        self._head_bytes = self._hsize = self._nheaders = 0
        self._interim = 0
        self.transport.write(data)
        if more is not None:
            self.transport.write(more)

    def on_timeout(self, request_no: int) -> None:
        if request_no != self.requests:
            return  # a late timer of an earlier request; this connection has moved on
        self.timed_out = True
        before = self.state == _HEAD
        self.abort(
            UpstreamError(
                f"no data from {self.pool.host}:{self.pool.port} for {self.pool.read_timeout} s",
                before_response=before,
            )
        )

    def abort(self, exc: UpstreamError) -> None:
        """Fail whoever waits on this connection and drop it."""
        fut, self._head_fut = self._head_fut, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.fail(exc)
        if self.state != _CLOSED:
            self.state = _CLOSED
            # Free the slot now, not when connection_lost runs: a waiter may go ahead.
            self.pool.lost(self)
            if self.transport is not None:
                self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and self.state != _CLOSED and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.state != _CLOSED and self._paused:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, _CLOSED
        self.pool.lost(self)
        if state == _EOF and exc is None and self._resp is not None:
            self._resp.finish()  # the body was "up to the end of the connection"
            self._resp = None
            return
        why = f": {exc}" if exc else ""
        self.abort(
            UpstreamError(
                f"connection to {self.pool.host}:{self.pool.port} closed{why}",
                before_response=state == _HEAD,
            )
        )

    def eof_received(self) -> bool | None:
        if self.state == _IDLE:
            # The server closed an idle keep-alive connection: never hand it out again.
            self.state = _CLOSED
        return None  # let the transport close; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _HEAD:
            self.received = True
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD + len(data):
                self._protocol_error(f"response head longer than {MAX_HEAD} bytes")
                return
        elif state == _IDLE:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.abort(UpstreamError("unexpected data on an idle connection", before_response=True))
            return
        elif state == _CLOSED:
            return
        try:
            self.parser.feed_data(data)
        except _Stop:
            return
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Stop):
                raise
            return
        except httptools.HttpParserError as e:
            self._protocol_error(str(e) or type(e).__name__)
            return
        if self.state == _HEAD and self._head_bytes > MAX_HEAD:
            self._protocol_error(f"response head longer than {MAX_HEAD} bytes")

    # -- llhttp's callbacks, during feed_data --------------------------------------------

    def _protocol_error(self, message: str) -> None:
        peer = f"{self.pool.host}:{self.pool.port}"
        self.abort(
            UpstreamError(
                f"bad HTTP answer from {peer}: {message[:200]}",
                before_response=self.state == _HEAD,
            )
        )

    def on_message_begin(self) -> None:
        if self.state == _IDLE:
            # A second answer after the one asked for (bytes past its Content-Length):
            # the connection's framing is lost. The answer itself is complete.
            self.abort(UpstreamError("unexpected data on an idle connection", before_response=True))
        if self.state == _CLOSED:
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._hsize += len(name) + len(value) + 4
        self._nheaders += 1
        if self._nheaders > MAX_HEADERS or self._hsize > MAX_HEAD:
            many = self._nheaders > MAX_HEADERS
            what = f"more than {MAX_HEADERS} headers" if many else "a head over 64 KiB"
            self._protocol_error(what)
            raise _Stop
        # llhttp has refused control characters, bare CR and LF: nothing here can split a
        # header line when the router writes it out again.
        key = name.decode("latin-1").lower()
        val = value.rstrip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._interim += 1
            self._in_interim = True
            self._headers = {}
            self._nheaders = 0
            if self._interim > MAX_INTERIM:
                self._protocol_error(f"more than {MAX_INTERIM} interim (1xx) answers")
                raise _Stop
            return
        headers, self._headers = self._headers, {}
        self._keep = parser.should_keep_alive()
        resp = UpstreamResponse(self, status, headers)
        if self._no_body or status in (204, 304):
            state = _IDLE
        elif "content-length" in headers or (
            headers.get("transfer-encoding", "").lower().rsplit(",", 1)[-1].strip() == "chunked"
        ):
            state = _BODY
        else:  # no length: the body ends with the connection
            state, self._keep = _EOF, False
        self.state = state
        self._resp = resp
        fut, self._head_fut = self._head_fut, None
        if fut is not None and not fut.done():
            fut.set_result(resp)
        if state == _IDLE:
            # No body follows (HEAD, 204, 304). llhttp knows that of 204 and 304 but not of
            # an answer to HEAD: a fresh parser for the next answer on this connection.
            if self._no_body:
                self.parser = httptools.HttpResponseParser(self)
            self._complete()
            if self._no_body:
                raise _Stop

    def on_body(self, data: bytes) -> None:
        resp = self._resp
        if resp is not None:
            resp.feed(data)

    def on_message_complete(self) -> None:
        if self._in_interim:
            self._in_interim = False
            return
        if self.state in (_BODY, _EOF):
            self._complete()

    def _complete(self) -> None:
        """The answer ended: finish the response and give the connection back (or close it)."""
        resp, self._resp = self._resp, None
        self.state = _IDLE
        if resp is not None:
            resp.finish()
        if self._keep:
            # The last bytes may have come in the same read that paused it for a slow reader.
            self.resume_reading()
            self.pool.put(self)
        else:
            self.state = _CLOSED
            if self.transport is not None:
                self.transport.close()
