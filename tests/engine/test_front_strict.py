"""The fast front parses request heads with llhttp: what the hand-written parser accepted
and aiohttp refuses is refused the same way on both paths (handed to aiohttp, which
answers 400), and the connection limits hold on both paths."""

from __future__ import annotations

import asyncio
import json

import pytest
from _routing import eventually, routed
from test_front import BODY, Conn, conn, counts, lms, post

from lmtui.config import RouterConfig

HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)
CL = b"Content-Length: %d\r\n" % len(BODY)


def raw(extra: bytes, *, cl: bool = True) -> bytes:
    return HEAD + (CL if cl else b"") + extra + b"\r\n" + BODY


#: Each of these reached the router through the hand-written parser; aiohttp's strict
#: (llhttp) parser refuses each with a 400. Now the front refuses them the same way.
SMUGGLING = {
    "bare LF inside a header value": raw(b"X-A: b\nX-B: c\r\n"),
    "bare CR inside a header value": raw(b"X-A: b\rc\r\n"),
    "NUL inside a header value": raw(b"X-A: b\x00c\r\n"),
    "a header name that is not a token": raw(b"X(A: b\r\n"),
    "a space before the colon": raw(b"X-A : b\r\n"),
    "obs-fold": raw(b"X-A: b\r\n folded\r\n"),
    "Content-Length with Transfer-Encoding": raw(b"Transfer-Encoding: chunked\r\n"),
    "two Content-Lengths": raw(b"Content-Length: %d\r\n" % len(BODY)),
    "two Host headers": raw(b"Host: evil.example\r\n"),
    "two Content-Type headers": raw(b"Content-Type: text/plain\r\n"),
    "a header value over 8190 bytes": raw(b"X-Big: " + b"a" * 9000 + b"\r\n"),
    "more than 128 headers": raw(b"X-H: v\r\n" * 130),
}


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_a_malformed_head_gets_aiohttps_400_never_a_served_request(name: str) -> None:
    async with routed([lms()]) as (cluster, engine), conn(engine) as c:
        await c.send(SMUGGLING[name])
        status, _, _ = await c.response()
        assert status == 400, name
        assert counts(engine) == (0, 1)  # refused by aiohttp, not served by the front
        assert not cluster.node("a").records  # nothing reached the node


async def test_what_the_front_accepts_is_served_and_well_formed_oddities_still_are() -> None:
    """Spaces around a value, a header with an empty value, mixed-case names, a
    repeated header that may repeat: all valid, all served on the fast path."""
    extra = b"x-a:    spaced   \r\nX-Empty:\r\nACCEPT: a\r\naccept: b\r\n"
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(raw(extra))
        status, _, body = await c.response()
        assert status == 200 and json.loads(body)["choices"]
        assert counts(engine) == (1, 0)


async def test_connection_close_from_the_client_is_honoured() -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(post(extra="Connection: close\r\n"))
        status, headers, _ = await c.response()
        assert status == 200 and headers["connection"] == "close"
        assert await c.closed()


async def test_connections_past_the_per_address_limit_get_a_503_and_are_closed() -> None:
    """The limit counts connections the front handed to aiohttp too (2,000 idle
    connections after one GET /v1/models once used every descriptor), and a closed
    connection frees its place."""
    limits = RouterConfig(max_connections_per_address=3)
    async with routed([lms()], router=limits) as (_c, engine):
        assert engine.front is not None
        async with conn(engine) as a, conn(engine) as b, conn(engine) as g:
            await a.send(post())
            assert (await a.response())[0] == 200
            await g.send(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await g.response())[0] == 200  # handed to aiohttp, still counted
            await b.send(post())
            assert (await b.response())[0] == 200
            async with conn(engine) as over:
                status, headers, body = await over.response()
                assert status == 503 and headers["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "too_many_connections"
                assert await over.closed()
            assert engine.front.refused == 1
        # All three closed (aiohttp's one included): every place is free again.
        await eventually(lambda: engine.front is not None and engine.front.open == 0)
        assert engine.front.by_address == {}
        async with conn(engine) as again:
            await again.send(post())
            assert (await again.response())[0] == 200


async def test_the_total_limit_holds_across_addresses() -> None:
    limits = RouterConfig(max_connections=2)
    async with routed([lms()], router=limits) as (_c, engine):
        assert engine.router_url is not None
        port = int(engine.router_url.rsplit(":", 1)[1])
        # Two clients from other loopback addresses (Linux routes all of 127/8 to lo).
        others = [
            await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{i}", 0))
            for i in (2, 3)
        ]
        try:
            for _r, w in others:
                w.write(post())
            for r, _w in others:
                assert (await Conn(r, _w).response())[0] == 200
            assert engine.front is not None and len(engine.front.by_address) == 2
            async with conn(engine) as over:
                assert (await over.response())[0] == 503
        finally:
            for _r, w in others:
                w.close()


async def test_a_control_api_body_that_never_arrives_is_a_408() -> None:
    """A chunked head with no chunks to the control API waited forever."""
    limits = RouterConfig(body_timeout=0.3)
    async with routed([lms()], router=limits) as (_c, engine), conn(engine) as c:
        await c.send(
            b"POST /lmtui/v1/strategy HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        status, _, body = await c.response()
        assert status == 408 and b"did not arrive within 0.3 s" in body
        assert await c.closed()


async def test_a_dribbled_head_is_cut_however_often_a_byte_comes() -> None:
    """One byte every 50 ms never lets the idle timer fire; the head limit still does."""
    limits = RouterConfig(head_timeout=0.4)
    async with routed([lms()], router=limits) as (_c, engine), conn(engine) as c:
        sent = 0
        for i in range(len(HEAD)):
            try:
                await c.send(HEAD[i : i + 1])
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(0.05)
            if c.r.at_eof() or len(c.r._buffer):  # type: ignore[attr-defined]
                break
        status, _, _ = await c.response()
        assert status == 408
        assert sent < len(HEAD)  # cut by the head limit before the head was complete
