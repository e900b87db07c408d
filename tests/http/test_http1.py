"""The lean upstream client against real loopback servers: aiohttp.web and raw asyncio ones."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from lmtui.http import UpstreamError, UpstreamPool

JSON = {"Content-Type": "application/json"}
#: Every test body runs under this bound, so a bug shows as a failure, never as a hang.
LIMIT_S = 10


# --- servers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A hand-written HTTP server for edge cases; ``handler(reader, writer, conn_no)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled at shutdown: end quietly (a cancelled handler task makes asyncio's
            # stream callback log an error).
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body; None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests += 1
        return head + body


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- bodies ------------------------------------------------------------------------------


async def test_content_length_body_headers_and_request_bytes() -> None:
    seen: list[tuple[str, str, bytes, str | None]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path, body, request.headers.get("Authorization")))
        return web.json_response({"got": len(body)}, status=201, headers={"X-Up": "yes"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    async with asyncio.timeout(LIMIT_S), aiohttp_server(app) as url:
        pool = UpstreamPool(url)
        try:
            r = await pool.request(
                "POST", "/v1/chat/completions", b'{"a": 1}', {**JSON, "Authorization": "Bearer k"}
            )
            assert r.status == 201
            assert r.headers["x-up"] == "yes"
            assert r.headers["content-type"].startswith("application/json")
            assert await r.read() == b'{"got": 8}'
            r.release()
        finally:
            await pool.close()
    assert seen == [("POST", "/v1/chat/completions", b'{"a": 1}', "Bearer k")]


async def test_base_url_path_prefix_is_kept() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/openai/v1/models", handler)
    async with asyncio.timeout(LIMIT_S), aiohttp_server(app) as url:
        pool = UpstreamPool(url + "/openai/")
        r = await pool.request("GET", "/v1/models", b"", {})
        assert (r.status, await r.read()) == (200, b"/openai/v1/models")
        await pool.close()


async def test_chunked_body_is_decoded_and_large_bodies_survive_back_pressure() -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"x" * 700_000, b"data: [DONE]\n\n"]

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for p in pieces:
            await resp.write(p)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/s", chunked)
    async with asyncio.timeout(LIMIT_S), aiohttp_server(app) as url:
        pool = UpstreamPool(url)
        try:
            r = await pool.request("POST", "/s", b"{}", JSON)
            assert r.headers["transfer-encoding"] == "chunked"
            assert await r.read() == b"".join(pieces)
            # The same, consumed piece by piece by a reader slower than the socket.
            r = await pool.request("POST", "/s", b"{}", JSON)
            got = []
            while (piece := await r.next_chunk()) is not None:
                got.append(piece)
                await asyncio.sleep(0)
            assert b"".join(got) == b"".join(pieces)
            assert pool.connections == 1
        finally:
            await pool.close()


async def test_stream_pieces_arrive_before_the_end() -> None:
    first_seen = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        # The rest is only sent once the client has shown it got the first piece.
        await asyncio.wait_for(first_seen.wait(), 5)
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/s", sse)
    async with asyncio.timeout(LIMIT_S), aiohttp_server(app) as url:
        pool = UpstreamPool(url)
        r = await pool.request("POST", "/s", b"{}", JSON)
        assert await r.next_chunk() == b"data: first\n\n"
        first_seen.set()
        assert await r.next_chunk() == b"data: second\n\n"
        assert await r.next_chunk() is None
        r.release()
        await pool.close()


async def test_body_read_to_eof_and_no_body_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        req = await srv.read_request(reader)
        assert req is not None
        if req.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
            req = await srv.read_request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            req = await srv.read_request(reader)
        assert req is not None
        # No length, no chunking: the body runs until the server closes.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        r = await pool.request("HEAD", "/", b"", {})
        assert (r.status, r.headers["content-length"], await r.read()) == (200, "50", b"")
        r = await pool.request("DELETE", "/x", b"", {})
        assert (r.status, await r.read()) == (204, b"")
        r = await pool.request("GET", "/eof", b"", {})
        assert (r.status, await r.read()) == (200, b"part one, part two")
        assert srv.connections == 1
        await pool.close()


# --- connections ------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/e", handler)
    async with asyncio.timeout(LIMIT_S), aiohttp_server(app) as url:
        pool = UpstreamPool(url)
        for i in range(20):
            r = await pool.request("POST", "/e", b"%d" % i, JSON)
            assert await r.read() == b"%d" % i
            r.release()
        assert len(peers) == 1
        assert (pool.connections, pool.idle_connections) == (1, 1)
        await pool.close()


async def test_idle_connections_are_reused_last_in_first_out() -> None:
    both_in = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(reader) is not None:
            if srv.requests >= 2:
                both_in.set()
            await both_in.wait()
            if srv.requests <= 2 and n == 1:
                await asyncio.sleep(0.05)  # connection 1 answers last, so it is idle last
            writer.write(ok(b"%d" % n))
            await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)

        async def one() -> bytes:
            return await (await pool.request("GET", "/", b"", {})).read()

        assert sorted(await asyncio.gather(one(), one())) == [b"1", b"2"]
        # The connection that came back last is warm: it serves everything sequential.
        assert [await one() for _ in range(5)] == [b"1"] * 5
        await pool.close()


async def test_connection_close_answer_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(ok(b"bye", b"Connection: close\r\n"))
            await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        for _ in range(3):
            r = await pool.request("GET", "/", b"", {})
            assert await r.read() == b"bye"
            assert pool.idle_connections == 0
        assert srv.connections == 3
        await pool.close()


async def test_idle_connection_closed_by_peer_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)
        writer.write(ok(b"conn %d" % n))
        await writer.drain()
        # The keep-alive race: the next request on this connection meets a closing server
        # that answers nothing (as when its keep-alive timeout fires just then).
        await srv.read_request(reader)

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        r = await pool.request("POST", "/", b"{}", JSON)
        assert await r.read() == b"conn 1"
        r = await pool.request("POST", "/", b"{}", JSON)
        assert (r.status, await r.read()) == (200, b"conn 2")
        assert srv.connections == 2
        await pool.close()


async def test_idle_connection_closed_while_idle_is_dropped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)
        writer.write(ok(b"conn %d" % n))
        await writer.drain()  # then close at once, without Connection: close

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        assert await (await pool.request("GET", "/", b"", {})).read() == b"conn 1"
        while pool.connections:  # the pool notices the close on its own
            await asyncio.sleep(0.01)
        assert await (await pool.request("GET", "/", b"", {})).read() == b"conn 2"
        await pool.close()


async def test_a_new_connection_that_fails_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)  # and close without a word

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        with pytest.raises(UpstreamError) as e:
            await pool.request("POST", "/", b"{}", JSON)
        assert e.value.before_response
        assert srv.connections == 1
        await pool.close()


async def test_connection_refused() -> None:
    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}")
    async with asyncio.timeout(LIMIT_S):
        with pytest.raises(UpstreamError, match="cannot connect") as e:
            await pool.request("POST", "/", b"{}", JSON)
    assert e.value.before_response
    assert pool.connections == 0
    await pool.close()


async def test_read_timeout_on_a_hung_server() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)
        if n == 2:  # the second connection gets half a body, then silence
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
        await asyncio.sleep(LIMIT_S)

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url, read_timeout=0.2)
        with pytest.raises(UpstreamError, match="no data") as e:
            await pool.request("POST", "/", b"{}", JSON)
        assert e.value.before_response
        r = await pool.request("POST", "/", b"{}", JSON)
        with pytest.raises(UpstreamError, match="no data") as e:
            await r.read()
        assert not e.value.before_response
        assert pool.connections == 0
        await pool.close()


async def test_body_cut_mid_way_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        else:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"b\r\ndata: one\n\n\r\n20\r\ndata: tw"
            )
        await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        r = await pool.request("POST", "/", b"{}", JSON)
        with pytest.raises(UpstreamError, match="closed") as e:
            await r.read()
        assert not e.value.before_response
        r = await pool.request("POST", "/", b"{}", JSON)
        got = []
        with pytest.raises(UpstreamError):
            while (piece := await r.next_chunk()) is not None:
                got.append(piece)
        assert b"".join(got) == b"data: one\n\ndata: tw"
        await pool.close()


async def test_pool_limit_makes_the_next_request_wait() -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(reader) is not None:
            await go.wait()
            writer.write(ok(b"done"))
            await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url, max_connections=2)

        async def one() -> bytes:
            r = await pool.request("POST", "/", b"{}", JSON)
            return await r.read()

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        while srv.requests < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert srv.requests == 2 and srv.connections == 2
        assert not any(t.done() for t in tasks)
        go.set()
        assert await asyncio.gather(*tasks) == [b"done"] * 3
        assert srv.connections == 2  # the third request took a freed connection
        await pool.close()


async def test_release_before_the_end_and_cancel_close_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(LIMIT_S)

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url, max_connections=1)
        r = await pool.request("POST", "/", b"{}", JSON)
        r.release()
        reader = asyncio.create_task(
            (await pool.request("POST", "/", b"{}", JSON)).read()
        )  # takes the one slot again, so the first connection was dropped
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        while pool.connections:
            await asyncio.sleep(0.01)
        assert srv.connections == 2
        await pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # What the hand-written parser let through, each refused by llhttp now. A bare LF
        # inside a value reached the router's client as a header of its own:
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\nSet-Cookie: pwned=1\r\n"
        b"Content-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-A: b\rc\r\nContent-Length: 0\r\n\r\n",  # bare CR
        b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n",  # NUL
        b"HTTP/1.1 200 OK\r\nX-A: b\r\n folded\r\nContent-Length: 0\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\n",  # CL with TE
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX(A: b\r\nContent-Length: 0\r\n\r\n",  # not a token
        # 5,000 interim answers raised a RecursionError; past MAX_INTERIM it is refused.
        b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        # A head past 64 KiB, or more than 128 headers.
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 200 + b"Content-Length: 0\r\n\r\n",
    ],
)
async def test_malformed_answers_are_errors(answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(LIMIT_S)

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        with pytest.raises(UpstreamError, match="bad HTTP answer"):
            r = await pool.request("POST", "/", b"{}", JSON)
            await r.read()
        await pool.close()


async def test_a_few_interim_answers_are_skipped_and_headers_are_clean() -> None:
    """1xx answers before the real one are skipped; a repeated header is joined; trailing
    spaces after a value (llhttp keeps them) are dropped."""
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-A: one  \r\nx-a: two\r\nContent-Length: 2\r\n\r\nhi"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(answer)
            await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        for _ in range(2):  # and the connection is reused after it
            r = await pool.request("POST", "/", b"{}", JSON)
            assert r.status == 200 and r.headers["x-a"] == "one, two"
            assert "link" not in r.headers
            assert await r.read() == b"hi"
        assert srv.connections == 1
        await pool.close()


async def test_bytes_after_an_answer_close_the_connection_but_the_answer_stands() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(ok(b"hi") + b"EXTRA bytes nobody asked for")
            await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        for _ in range(2):
            r = await pool.request("POST", "/", b"{}", JSON)
            assert await r.read() == b"hi"
        assert srv.connections == 2  # the first connection was not trusted again
        await pool.close()


async def test_an_answer_to_head_has_no_body_and_the_connection_is_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(reader)) is not None:
            if req.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                writer.write(ok(b"body"))
            await writer.drain()

    async with asyncio.timeout(LIMIT_S), RawServer(handler) as srv:
        pool = UpstreamPool(srv.url)
        r = await pool.request("HEAD", "/", b"", {})
        assert r.status == 200 and r.headers["content-length"] == "1234"
        assert await r.read() == b""
        r = await pool.request("GET", "/", b"", {})
        assert await r.read() == b"body"
        assert srv.connections == 1
        await pool.close()


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="plain http"):
        UpstreamPool("https://example.invalid")
    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="line break"):
        await pool.request("GET", "/", b"", {"X-A": "1\r\nX-Injected: 2"})
    await pool.close()


async def test_a_body_past_the_bound_is_refused_and_its_connection_not_reused() -> None:
    """A 300 MiB non-streamed answer took lmtui to 648 MiB: ``read(max_bytes)`` stops at
    the bound, whether the body has a length or is chunked."""

    async def big(request: web.Request) -> web.StreamResponse:
        if request.query.get("chunked"):
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(64):
                await resp.write(b"x" * 65536)
            await resp.write_eof()
            return resp
        return web.Response(body=b"x" * (4 * 1024 * 1024))

    async def small(_request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    async with asyncio.timeout(LIMIT_S), aiohttp_server(app) as url:
        pool = UpstreamPool(url)
        try:
            for target in ("/big", "/big?chunked=1"):
                r = await pool.request("GET", target, b"", {})
                with pytest.raises(UpstreamError, match="larger than 1048576"):
                    await r.read(1024 * 1024)
                r.release()
            r = await pool.request("GET", "/small", b"", {})
            assert await r.read(1024 * 1024) == b"ok"  # a fresh connection, the right bytes
            r.release()
        finally:
            await pool.close()
