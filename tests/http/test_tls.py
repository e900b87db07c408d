"""The aiohttp-backed pool for https nodes keeps the lean pool's interface and errors.

It is exercised over plain HTTP here (the class does not care which scheme aiohttp speaks);
what matters is that the router's code path works the same on it."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from lmtui.http import TlsUpstreamPool, UpstreamError, UpstreamPool, pool_for


async def test_pool_for_picks_by_scheme() -> None:
    assert isinstance(pool_for("http://127.0.0.1:1"), UpstreamPool)
    tls = pool_for("https://example.invalid:8443")
    assert isinstance(tls, TlsUpstreamPool)
    await tls.close()


async def test_read_stream_and_errors_over_aiohttp() -> None:
    async def whole(_r: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stream(r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(r)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.01)
        return resp

    app = web.Application()
    app.router.add_post("/whole", whole)
    app.router.add_post("/stream", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pool = TlsUpstreamPool(f"http://127.0.0.1:{port}")
    try:
        r = await pool.request("POST", "/whole", b"{}", {"Content-Type": "application/json"})
        assert r.status == 200 and r.headers["content-type"].startswith("application/json")
        assert await r.read() == b'{"ok": true}'
        r.release()
        r = await pool.request("POST", "/stream", b"{}", {})
        chunks = []
        while (c := await r.next_chunk()) is not None:
            chunks.append(c)
        r.release()
        assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    finally:
        await pool.close()
        await runner.cleanup()
    refused = TlsUpstreamPool(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamError) as ei:
        await refused.request("POST", "/whole", b"{}", {})
    assert ei.value.before_response
    await refused.close()


async def test_a_get_goes_without_a_body_and_its_target_as_given() -> None:
    """What the polls send to an https node: like the lean pool, no empty body (aiohttp would
    add Content-Length: 0 and an octet-stream type to a GET) and no re-quoted query."""
    seen: dict[str, object] = {}

    async def echo(r: web.Request) -> web.Response:
        seen.update(target=r.raw_path, headers=dict(r.headers))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/props", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pool = TlsUpstreamPool(f"http://127.0.0.1:{port}")
    try:
        r = await pool.request("GET", "/props?model=org%2Fm", b"", {"Authorization": "Bearer k"})
        await r.read()
        r.release()
    finally:
        await pool.close()
        await runner.cleanup()
    assert seen["target"] == "/props?model=org%2Fm"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == "Bearer k"
    assert not {"Content-Length", "Content-Type", "Accept-Encoding"} & set(headers)
