"""Does a lean upstream client pay? A bare proxy with aiohttp's client vs lmtui's own.

Two bare proxies, identical but for the client they use upstream, each an ``aiohttp.web``
server on uvloop with no logic of lmtui's:

- **aiohttp**: ``aiohttp.ClientSession`` configured as the router configures it
  (``TCPConnector(limit=256)``, ``auto_decompress=False``, no User-Agent);
- **lean**: :class:`lmtui.http.UpstreamPool`.

Routes: ``POST /v1/chat/completions`` reads the body, forwards it, and answers with the
upstream's status, content type and whole body; ``POST /stream/v1/chat/completions`` does the
same but passes the body on chunk by chunk through a ``StreamResponse`` (the router's SSE
path). The upstream is nginx answering canned payloads (``bench/_upstream.py``); the load is
``wrk -t1 -c32`` pinned to CPU 1, the proxy pinned to CPU 0, the upstream floating::

    .venv/bin/python bench/upstream_client.py                   # 5 s per run, 2 rounds
    .venv/bin/python bench/upstream_client.py --seconds 3 --rounds 1 --concurrency 1 32

Variants run alternately (aiohttp, lean, aiohttp, lean, ...) so that other load on the
machine hits both alike; each round is reported, then the best per variant.
The proxy's CPU µs per request does not depend on how busy the other core is.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _loadgen as lg
import _upstream as up
import psutil

VARIANTS = ("aiohttp", "lean")
PROXY_CPU, CLIENT_CPU = 0, 1


# --- the proxies (run in their own process: --serve VARIANT) ------------------------------


def serve(variant: str, port: int, upstream: str) -> None:
    """Run one bare proxy on 127.0.0.1:``port`` in front of ``upstream`` until killed."""
    import aiohttp
    import uvloop
    from aiohttp import web

    fwd_headers = {"Content-Type": "application/json"}
    target = upstream.rstrip("/") + "/v1/chat/completions"

    async def health(_: web.Request) -> web.Response:
        return web.Response(text=up.MODEL)

    async def make_app() -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", health)
        if variant == "aiohttp":
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=900),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )

            async def plain(request: web.Request) -> web.StreamResponse:
                body = await request.read()
                async with session.post(target, data=body, headers=fwd_headers) as r:
                    data = await r.read()
                    ctype = r.headers.get("Content-Type", "application/json")
                    return web.Response(body=data, status=r.status, headers={"Content-Type": ctype})

            async def stream(request: web.Request) -> web.StreamResponse:
                body = await request.read()
                async with session.post(target, data=body, headers=fwd_headers) as r:
                    resp = web.StreamResponse(
                        status=r.status,
                        headers={"Content-Type": r.headers.get("Content-Type", "text/plain")},
                    )
                    await resp.prepare(request)
                    async for chunk in r.content.iter_any():
                        await resp.write(chunk)
                    await resp.write_eof()
                    return resp

            async def close_session(_: web.Application) -> None:
                await session.close()

            app.on_cleanup.append(close_session)
        else:
            from lmtui.http import UpstreamPool

            pool = UpstreamPool(upstream, max_connections=256)

            async def plain(request: web.Request) -> web.StreamResponse:
                body = await request.read()
                r = await pool.request("POST", "/v1/chat/completions", body, fwd_headers)
                try:
                    data = await r.read()
                finally:
                    r.release()
                ctype = r.headers.get("content-type", "application/json")
                return web.Response(body=data, status=r.status, headers={"Content-Type": ctype})

            async def stream(request: web.Request) -> web.StreamResponse:
                body = await request.read()
                r = await pool.request("POST", "/v1/chat/completions", body, fwd_headers)
                try:
                    resp = web.StreamResponse(
                        status=r.status,
                        headers={"Content-Type": r.headers.get("content-type", "text/plain")},
                    )
                    await resp.prepare(request)
                    while (chunk := await r.next_chunk()) is not None:
                        await resp.write(chunk)
                    await resp.write_eof()
                    return resp
                finally:
                    r.release()

            async def close_pool(_: web.Application) -> None:
                await pool.close()

            app.on_cleanup.append(close_pool)
        app.router.add_post("/v1/chat/completions", plain)
        app.router.add_post("/stream/v1/chat/completions", stream)
        return app

    async def main() -> None:
        runner = web.AppRunner(await make_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


# --- the measurement -------------------------------------------------------------------


def start_proxy(variant: str, work: Path, upstream: str) -> tuple[up.Proc, str]:
    port = up.free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", variant]
    argv += ["--port", str(port), "--upstream", upstream]
    proc = up.Proc(f"proxy-{variant}", argv, work, cpu=PROXY_CPU)
    url = f"http://127.0.0.1:{port}"
    up.wait_http(proc, f"{url}/v1/models", timeout=15, expect=up.MODEL.encode())
    return proc, url


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def measure(variant: str, work: Path, upstream: str, args: argparse.Namespace) -> list[dict]:
    """Every (mode, concurrency) run for one variant, in a fresh proxy process."""
    proc, base = start_proxy(variant, work, upstream)
    rows = []
    try:
        watched = psutil.Process(proc.pid)
        for stream in (False, True):
            url = base + ("/stream/v1/chat/completions" if stream else "/v1/chat/completions")
            body = up.request_body(stream)
            problem = lg.sanity_check(url, body, stream=stream)
            if problem is not None:
                raise RuntimeError(f"{variant}: bad answer: {problem}\n{proc.stderr_tail()}")
            # Warm-up: connection pools, lazily built routes.
            lg.wrk_run(url, body, connections=max(args.concurrency), seconds=1, cpu=CLIENT_CPU)
            for conns in args.concurrency:
                before = cpu_s(watched)
                res = lg.wrk_run(url, body, connections=conns, seconds=args.seconds, cpu=CLIENT_CPU)
                cpu = (cpu_s(watched) - before) * 1e6 / max(1, res.requests)
                rows.append(
                    {
                        "variant": variant,
                        "stream": stream,
                        "conns": conns,
                        "rps": res.rps,
                        "p50_ms": res.p50_us / 1000,
                        "cpu_us": cpu,
                        "errors": res.errors,
                    }
                )
                log(
                    f"  {variant:8} {'stream' if stream else 'json':6} c={conns:<3} "
                    f"{res.rps:8.0f} req/s  p50 {res.p50_us / 1000:.3f} ms  "
                    f"cpu {cpu:.1f} µs/req  errors {res.errors}"
                )
    finally:
        proc.stop()
    return rows


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each run (5)")
    p.add_argument("--rounds", type=int, default=2, help="times each variant is measured (2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[32], help="wrk -c (32)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return 0
    if not lg.wrk_available() or up.nginx_path() is None:
        log("this benchmark needs wrk and nginx (apt-get install wrk nginx)")
        return 2
    work = up.make_workdir("lmtui-upclient-")
    upstream, upstream_url, _kind = up.start_upstream(work, cpu=None)
    rows: list[dict] = []
    try:
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}:")
            for variant in args.variants:
                rows += [dict(r, round=rnd + 1) for r in measure(variant, work, upstream_url, args)]
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{'variant':9}{'mode':8}{'conc':>5}{'round':>6}{'req/s':>9}{'p50 ms':>9}{'cpu µs/req':>12}"
    )
    for r in rows:
        mode = "stream" if r["stream"] else "json"
        print(
            f"{r['variant']:9}{mode:8}{r['conns']:>5}{r['round']:>6}{r['rps']:>9.0f}"
            f"{r['p50_ms']:>9.3f}{r['cpu_us']:>12.1f}"
        )
    print()
    for stream in (False, True):
        for conns in args.concurrency:
            best = {
                v: max(
                    (
                        r["rps"]
                        for r in rows
                        if (r["variant"], r["stream"], r["conns"]) == (v, stream, conns)
                    ),
                    default=0.0,
                )
                for v in args.variants
            }
            if best.get("aiohttp") and "lean" in best:
                mode = "stream" if stream else "json"
                print(
                    f"best {mode:6} c={conns:<3} aiohttp {best['aiohttp']:.0f}  "
                    f"lean {best['lean']:.0f}"
                    f"  lean/aiohttp x{best['lean'] / best['aiohttp']:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
