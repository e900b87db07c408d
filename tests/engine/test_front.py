"""The router's fast HTTP/1.1 front: what it serves itself, what it hands to aiohttp.web, and
HTTP details a hand-written server can get wrong (keep-alive, pipelining, chunked answers,
413 without reading the body, disconnects, idle connections, slow readers)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from _routing import eventually, routed

from lmtui.config import RouterConfig
from lmtui.core.model import NodeKind
from lmtui.engine.engine import Engine
from lmtui.http import front
from lmtui.sim import SimModel, SimNodeSpec

BODY = json.dumps(
    {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
).encode()


def lms(parallel: int = 4) -> SimNodeSpec:
    return SimNodeSpec(
        name="a",
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=[SimModel("m1", 5.0)],
        loaded=["m1"],
        parallel=parallel,
        version="0.4.2",
    )


def post(path: str = "/v1/chat/completions", body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class Conn:
    """A raw client connection that reads whole HTTP/1.1 responses."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    async def send(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(10):
            status_line = await self.r.readuntil(b"\r\n")
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await self.r.readuntil(b"\r\n")) != b"\r\n":
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            if status == 100:
                return status, headers, b""
            if "content-length" in headers:
                body = await self.r.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size = int((await self.r.readuntil(b"\r\n")).strip(), 16)
                    chunk = await self.r.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                body = await self.r.read()
            return status, headers, body

    async def closed(self) -> bool:
        async with asyncio.timeout(10):
            return await self.r.read() == b""


@asynccontextmanager
async def conn(engine: Engine) -> AsyncIterator[Conn]:
    assert engine.router_url is not None
    host, port = engine.router_url.removeprefix("http://").rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    try:
        yield Conn(r, w)
    finally:
        w.close()


def counts(engine: Engine) -> tuple[int, int]:
    assert engine.front is not None
    return engine.front.served, engine.front.handed_on


async def test_keep_alive_requests_are_served_by_the_front() -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        for _ in range(3):
            await c.send(post())
            status, headers, body = await c.response()
            assert status == 200, body
            assert json.loads(body)["choices"][0]["message"]["content"]
            assert headers["content-type"].startswith("application/json")
            assert "date" in headers
        assert counts(engine) == (3, 0)


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        bad = post(body=b'{"model": ')
        await c.send(post() + bad + post("/v1/embeddings", b'{"model":"m1","input":"x"}'))
        assert (await c.response())[0] == 200
        assert (await c.response())[0] == 400
        status, _, body = await c.response()
        assert status == 200 and json.loads(body)["object"] == "list"
        assert counts(engine) == (3, 0)


async def test_a_streamed_answer_is_chunked_sse() -> None:
    async with routed([lms()], time_scale=0.05) as (_c, engine), conn(engine) as c:
        body = json.dumps({"model": "m1", "messages": [], "stream": True, "max_tokens": 30})
        await c.send(post(body=body.encode()))
        status, headers, data = await c.response()
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
        assert data.rstrip().endswith(b"data: [DONE]")
        events = [ln for ln in data.split(b"\n") if ln.startswith(b"data: {")]
        assert len(events) > 3


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="other-path"),
        pytest.param(post("/v1/chat/completions?x=1"), id="query-string"),
        pytest.param(
            post().replace(b"HTTP/1.1", b"HTTP/1.0", 1).replace(b"\r\n\r\n", b"\r\n"
            b"Connection: keep-alive\r\n\r\n", 1),
            id="http-1.0",
        ),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n" + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
            id="chunked-body",
        ),
        pytest.param(post(extra="Expect: 100-continue\r\n"), id="expect-continue"),
    ],
)  # fmt: skip
async def test_other_requests_go_to_aiohttp_with_the_connection(request_bytes: bytes) -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(request_bytes)
        status, _, body = await c.response()
        if status == 100:  # Expect: 100-continue (the body was sent along already)
            status, _, body = await c.response()
        assert status == 200, body
        assert counts(engine) == (0, 1)
        # The connection stays aiohttp's, and still works for the bot's requests.
        await c.send(post())
        assert (await c.response())[0] == 200
        assert counts(engine) == (0, 1)


async def test_a_fast_connection_can_be_handed_on_after_requests() -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(post())
        assert (await c.response())[0] == 200
        await c.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, body = await c.response()
        assert status == 200 and b"lmtui_requests_total" in body
        assert counts(engine) == (1, 1)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            post().replace(b"Content-Length:", b"X-Broken\r\nContent-Length:"),
            id="header-without-colon",
        ),
        pytest.param(post(extra=f"Content-Length: {len(BODY)}\r\n"), id="two-lengths"),
        pytest.param(post().replace(b"Content-Length", b"Content-Length "), id="space-in-name"),
        pytest.param(post().replace(b"Content-Length: ", b"Content-Length: -"), id="bad-length"),
        # Answered at once, not after the idle timeout.
        pytest.param(post().replace(b"\r\n", b"\n"), id="bare-newlines"),
    ],
)
async def test_malformed_heads_get_aiohttps_answer(request_bytes: bytes) -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(request_bytes)
        status, _, _ = await c.response()
        assert status == 400
        assert counts(engine) == (0, 1)


async def test_a_huge_head_is_handed_on_and_refused() -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nX-Big: " + b"a" * (front.MAX_HEAD + 10)
        )
        status, _, _ = await c.response()
        assert status in (400, 431)
        assert counts(engine) == (0, 1)


async def test_an_oversized_body_is_refused_and_dropped_and_the_connection_reused() -> None:
    router = RouterConfig(max_body_bytes=1000)
    async with routed([lms()], router=router) as (_c, engine), conn(engine) as c:
        big = post(body=b"x" * 3000)
        # The head alone gets the 413: it does not wait for a body it will not read.
        await c.send(big[:-3000])
        status, headers, body = await c.response()
        assert status == 413
        assert "connection" not in headers
        assert json.loads(body)["error"]["code"] == "request_too_large"
        # The body arrives after the answer and is dropped; the next request is served.
        await c.send(b"x" * 1000)
        await c.send(b"x" * 2000 + post())
        assert (await c.response())[0] == 200
        assert engine.front is not None
        (fc,) = engine.front.connections
        assert len(fc.buf) == 0


async def test_a_body_far_over_the_limit_is_refused_and_the_connection_closed() -> None:
    router = RouterConfig(max_body_bytes=1000)
    async with routed([lms()], router=router) as (_c, engine), conn(engine) as c:
        await c.send(post(body=b"x" * 5000)[:-5000])
        status, headers, _ = await c.response()
        assert status == 413 and headers["connection"] == "close"
        assert await c.closed()


async def test_a_client_that_ends_its_sending_has_left_on_both_paths() -> None:
    """A FIN is all the front sees of a client that gave up: its request is cancelled (it
    never reaches the node) and the connection closes, as on aiohttp's path."""
    spec = lms(parallel=1)
    spec.decode_tok_per_s = 5.0
    async with routed([spec], time_scale=1.0) as (cluster, engine):
        for path in ("/v1/chat/completions", "/v1/chat/completions?via=aiohttp"):
            async with conn(engine) as c:
                await c.send(post(path))
                await eventually(lambda: cluster.node("a").in_flight() > 0)
                c.w.write_eof()
                assert await c.closed()
                await eventually(lambda: cluster.node("a").in_flight() == 0)
        records = cluster.node("a").records
        assert len(records) == 2 and all(r.outcome == "cancelled" for r in records)


async def test_connection_close_is_honoured() -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(post(extra="Connection: close\r\n"))
        status, headers, _ = await c.response()
        assert status == 200 and headers["connection"] == "close"
        assert await c.closed()


async def test_a_missing_key_is_401_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMTUI_FRONT_KEY", "sk-good")
    router = RouterConfig(api_keys_env=["LMTUI_FRONT_KEY"])
    async with routed([lms()], router=router) as (_c, engine), conn(engine) as c:
        await c.send(post())
        status, _, body = await c.response()
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        await c.send(post(extra="Authorization: Bearer sk-good\r\n"))
        assert (await c.response())[0] == 200
        assert counts(engine) == (2, 0)


async def test_a_client_that_leaves_mid_request_frees_its_slot() -> None:
    async with routed([lms(parallel=1)], time_scale=0.5) as (_c, engine):
        body = json.dumps({"model": "m1", "messages": [], "max_tokens": 500}).encode()
        async with conn(engine) as c:
            await c.send(post(body=body))
            await eventually(
                lambda: any(i.in_flight for i in engine.store.snapshot.instances.values())
            )
        # The connection closed: the handler is cancelled and the slot comes back.
        await eventually(
            lambda: all(i.in_flight == 0 for i in engine.store.snapshot.instances.values())
        )


async def test_idle_connections_are_closed() -> None:
    limits = RouterConfig(idle_timeout=0.2, head_timeout=0.3, body_timeout=0.3)
    async with routed([lms()], router=limits) as (_c, engine):
        async with conn(engine) as c:
            await c.send(post())
            assert (await c.response())[0] == 200
            assert await c.closed()
        # A head that never completes (a byte now and then): a 408 after head_timeout,
        # although each byte came well within idle_timeout of the one before.
        async with conn(engine) as c2:
            for piece in (b"POST /v1/chat/completions HTTP/1.1\r\n", b"Host: 1", b"27.0.0.1\r\n"):
                await c2.send(piece)
                await asyncio.sleep(0.12)
            status, _, body = await c2.response()
            assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
            assert b"head did not arrive within 0.3 s" in body
            assert await c2.closed()
        # A body that stops half-way on the fast path: the same, after body_timeout.
        async with conn(engine) as c5:
            await c5.send(post()[:-5])
            status, _, body = await c5.response()
            assert status == 408 and b"body did not arrive within 0.3 s" in body
            assert await c5.closed()
        # A chunked body (aiohttp's path) that never comes: a 408, and the connection
        # closes, instead of waiting forever.
        async with conn(engine) as c4:
            await c4.send(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            assert (await c4.response())[0] == 408
            assert await c4.closed()
        # And so is a connection handed to aiohttp (its own default was an hour: 2,000
        # connections idle after one GET /v1/models were all still open after 85 s).
        async with conn(engine) as c3:
            await c3.send(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await c3.response())[0] == 200
            assert await c3.closed()


async def test_the_openai_client_and_httpx_get_the_same_answers_on_both_paths() -> None:
    """The same request through the front and through aiohttp (a query string sends it
    there) gives the same status, content type and JSON shape."""
    async with routed([lms()]) as (_c, engine):
        url = f"{engine.router_url}/v1/chat/completions"
        async with httpx.AsyncClient() as h:
            fast = await h.post(url, content=BODY, headers={"Content-Type": "application/json"})
            slow = await h.post(
                url + "?via=aiohttp", content=BODY, headers={"Content-Type": "application/json"}
            )
            json_ = {"Content-Type": "application/json"}
            bad_fast = await h.post(url, content=b"{", headers=json_)
            bad_slow = await h.post(url + "?v", content=b"{", headers=json_)
        assert fast.status_code == slow.status_code == 200
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.json().keys() == slow.json().keys()
        assert bad_fast.status_code == bad_slow.status_code == 400
        assert bad_fast.json() == bad_slow.json()


async def test_shutdown_lets_a_running_request_finish() -> None:
    async with routed([lms()], time_scale=0.05) as (_c, engine), conn(engine) as c:
        body = json.dumps({"model": "m1", "messages": [], "max_tokens": 40}).encode()
        await c.send(post(body=body))
        await eventually(lambda: any(i.in_flight for i in engine.store.snapshot.instances.values()))
        stopping = asyncio.create_task(engine.stop())
        status, _, data = await c.response()
        assert status == 200 and json.loads(data)["choices"], data
        await stopping


async def test_a_client_pipelining_without_limit_is_paused_not_buffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(front, "MAX_HEAD", 1000)  # read limit: 3,000 bytes
    router = RouterConfig(max_body_bytes=2000)
    async with (
        routed([lms(parallel=1)], router=router, time_scale=0.05) as (_c, engine),
        conn(engine) as c,
    ):
        slow = json.dumps({"model": "m1", "messages": [], "max_tokens": 400}).encode()
        await c.send(post(body=slow))
        await eventually(lambda: any(i.in_flight for i in engine.store.snapshot.instances.values()))
        # Far more than one request's worth of pipelined requests behind the slow one.
        n = 1600
        c.w.write(post() * n)  # ~290 kB
        assert engine.front is not None
        (fc,) = engine.front.connections
        await eventually(lambda: fc.reading_paused)
        await asyncio.sleep(0.2)
        # At most one socket read (asyncio reads up to 256 KiB) past the limit.
        assert len(fc.buf) <= fc._read_limit + 256 * 1024 < len(post()) * n
        # The requests are still answered, in order (reading resumes as the buffer drains).
        for _ in range(40):
            assert (await c.response())[0] == 200


def test_reading_resumes_once_the_buffer_drains_below_the_limit() -> None:
    class Transport:
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    class Stub:
        max_body_bytes = 100
        captured_headers: frozenset[bytes] = frozenset()

    class Fallback:
        def __call__(self) -> None: ...

        def connection_lost(self, handler: object, exc: object = None) -> None: ...

    server = front.FrontServer(Stub(), Fallback(), {})  # type: ignore[arg-type]
    fc = front.FastFront(server)
    t = Transport()
    fc.transport = t  # type: ignore[assignment]
    fc.buf += b"x" * (fc._read_limit + 1)
    fc._flow()
    assert t.paused and fc.reading_paused
    del fc.buf[:2]
    fc._flow()
    assert not t.paused and not fc.reading_paused


async def test_a_bug_in_the_router_is_a_500_and_the_connection_survives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        assert engine.router is not None
        real = engine.router.proxy
        calls = []

        async def broken(*args: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")
            await real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(engine.router, "proxy", broken)
        await c.send(post())
        status, _, body = await c.response()
        assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
        await c.send(post())
        assert (await c.response())[0] == 200


async def test_what_a_client_sends_is_a_400_on_both_paths_never_a_500() -> None:
    """Bad UTF-8 inside the model string and JSON nested 1,000 deep were 500s with a
    traceback; a 300-character model name reached events and metrics whole. Each is a 400
    that says why, the same on the fast front and through aiohttp, and counted."""
    bad = [
        (b'{"model": "m\xff\xfe1", "messages": []}', "not valid UTF-8"),
        (b'{"model": "m1", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested too deeply"),
        (json.dumps({"model": "m" * 300, "messages": []}).encode(), "length <= 256"),
        (json.dumps({"model": "m1", "user": "u" * 300}).encode(), "$.user"),
    ]
    async with routed([lms()]) as (_c, engine):
        url = f"{engine.router_url}/v1/chat/completions"
        async with httpx.AsyncClient() as h:
            for body, why in bad:
                ctype = {"Content-Type": "application/json"}
                fast = await h.post(url, content=body, headers=ctype)
                slow = await h.post(url + "?via=aiohttp", content=body, headers=ctype)
                assert fast.status_code == slow.status_code == 400, (body[:40], fast.text)
                assert fast.json() == slow.json()
                assert why in fast.json()["error"]["message"]
            metrics = (await h.get(f"{engine.router_url}/metrics")).text
        assert 'lmtui_requests_total{model="unknown",node="",outcome="bad_request"} 8.0' in metrics
        assert not any("m" * 300 in e.message for e in engine.store.events)


async def test_stream_null_and_unknown_fields_of_any_type_are_accepted() -> None:
    """The OpenAI API allows ``"stream": null``; a field lmtui does not read (``ttl`` as
    a string here) is the server's business, whatever its type."""
    async with routed([lms()]) as (_c, engine):
        url = f"{engine.router_url}/v1/chat/completions"
        async with httpx.AsyncClient() as h:
            for extra in ({"stream": None}, {"ttl": "5m"}, {"foo": {"bar": [1, "x"]}}):
                body = {"model": "m1", "messages": [], "max_tokens": 2, **extra}
                r = await h.post(url, json=body)
                assert r.status_code == 200, (extra, r.text)
                assert r.json()["choices"]


async def test_a_request_aiohttp_rejects_is_one_debug_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every malformed request aiohttp's parser refused used to log a 12-line traceback at
    ERROR: anything a client can send must cost the log one line, at debug level."""
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    async with routed([lms()]) as (_c, engine), conn(engine) as c:
        await c.send(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nBad\x01Name: x\r\n\r\n")
        assert (await c.response())[0] == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno == logging.DEBUG and not r.exc_info for r in records)
    assert all("\n" not in r.getMessage() for r in records)
    assert "BadHttpMessage" in records[0].getMessage()
