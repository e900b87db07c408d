"""Helpers for the fuzz tests: a live lmtui over simulated nodes on loopback, in the test's
own event loop (``live``) or in a thread of its own (``LiveThread``, for the synchronous
callers schemathesis and hypothesis are), and a raw HTTP/1.1 connection.

Imported as a plain module (tests/ has no packages), hence the name no other test
directory uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from lmtui.config import Config, NodeConfig, PollConfig, PoolConfig, RouterConfig
from lmtui.core.model import NodeKind
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

T = TypeVar("T")


def cluster_specs() -> list[SimNodeSpec]:
    """An LM Studio node with a chat model and an Ollama node with an embedding model."""
    return [
        SimNodeSpec(
            name="a",
            kind=NodeKind.LMSTUDIO,
            memory_gb=64,
            models=[SimModel("m1", 4.0)],
            loaded=["m1"],
            parallel=4,
            version="0.4.2",
        ),
        SimNodeSpec(
            name="b",
            kind=NodeKind.OLLAMA,
            memory_gb=64,
            models=[SimModel("e1", 1.0)],
            loaded=["e1"],
            parallel=4,
        ),
    ]


@asynccontextmanager
async def live(
    specs: list[SimNodeSpec] | None = None,
    *,
    router: RouterConfig | None = None,
    evil: EvilUpstream | None = None,
) -> AsyncIterator[tuple[SimCluster, Engine]]:
    """Simulated nodes and an engine routing to them on 127.0.0.1, every node polled once;
    with ``evil``, that node too (called ``evil``, serving ``EVIL_MODEL``)."""
    specs = cluster_specs() if specs is None else specs
    extra: list[NodeConfig] = []
    if evil is not None:
        await evil.start()
        extra.append(NodeConfig(name="evil", kind=NodeKind.OPENAI, url=evil.url, slots=64))
    async with contextlib.AsyncExitStack() as stack:
        if evil is not None:
            stack.push_async_callback(evil.stop)
        cluster = await stack.enter_async_context(SimCluster(specs, time_scale=0.01))
        nodes = [
            NodeConfig(
                name=s.name,
                kind=s.kind,
                url=cluster.url(s.name),
                memory_gb=s.memory_gb,
                slots=s.parallel if s.kind is NodeKind.OLLAMA else None,
            )
            for s in specs
        ] + extra
        cfg = Config(
            nodes=nodes,
            poll=PollConfig(interval=0.2, timeout=1.0),
            router=router or RouterConfig(),
            pool=PoolConfig(reserved_gb=0),
        )
        engine = Engine(cfg, listen="127.0.0.1:0")
        async with engine:
            await asyncio.gather(*(engine.poller.poll_once(n.name) for n in nodes))
            yield cluster, engine


class LiveThread:
    """A live lmtui (``live``) on an event loop in a thread of its own: ``url`` is its base
    URL, ``run`` runs a coroutine on that loop and waits for its result."""

    def __init__(self, **kw: Any) -> None:
        self._kw = kw
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: Future[None] | None = None
        self.engine: Engine
        self.cluster: SimCluster
        self.url = ""

    def __enter__(self) -> LiveThread:
        self._thread.start()
        ready: Future[None] = Future()

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                async with live(**self._kw) as (cluster, engine):
                    self.cluster, self.engine = cluster, engine
                    assert engine.router_url is not None
                    self.url = engine.router_url
                    ready.set_result(None)
                    await self._stop.wait()
            except BaseException as e:
                if not ready.done():
                    ready.set_exception(e)
                raise

        self._done = asyncio.run_coroutine_threadsafe(main(), self._loop)
        ready.result(timeout=30)
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None and self._done is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        try:
            self._done.result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


# -- raw HTTP/1.1 ---------------------------------------------------------------------------


class Answer:
    """One HTTP answer as a raw client read it: status, header lines as sent, body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.headers!r}, {self.body[:200]!r})"


class Raw:
    """A raw client connection to ``host:port``: send bytes, read whole answers."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def open(cls, url: str) -> Raw:
        host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
        r, w = await asyncio.open_connection(host, int(port), limit=1 << 20)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    async def answer(self, timeout: float = 10.0) -> Answer | None:
        """The next answer, or None when the server closed the connection first."""
        try:
            async with asyncio.timeout(timeout):
                head = await self.r.readuntil(b"\r\n\r\n")
                # Lines split at any LF, as browsers and lenient clients do: a bare LF
                # inside a header value is a header of its own to them.
                lines = [line.rstrip(b"\r") for line in head[:-4].split(b"\n")]
                status = int(lines[0].split(b" ", 2)[1])
                headers = []
                for line in lines[1:]:
                    k, _, v = line.decode("latin-1").partition(":")
                    headers.append((k, v.strip()))
                found = Answer(status, headers, b"")
                length = found.header("content-length")
                if length is not None:
                    found.body = await self.r.readexactly(int(length))
                elif (found.header("transfer-encoding") or "").lower() == "chunked":
                    found.body = await self._chunked()
                return found
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            return None

    async def _chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int((await self.r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.r.readuntil(b"\r\n")
                return bytes(out)
            out += await self.r.readexactly(size)
            await self.r.readexactly(2)

    async def closed(self, timeout: float) -> bool:
        """True when the server closes the connection within ``timeout`` (any bytes it
        sends first, such as a 408, are read and dropped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.r.read(65536):
                    pass
                return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    async def close(self) -> None:
        self.w.close()
        with contextlib.suppress(OSError):
            await self.w.wait_closed()


def post(
    path: str = "/v1/chat/completions",
    body: bytes = b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}]}',
    extra: bytes = b"",
    *,
    ctype: bytes = b"application/json",
) -> bytes:
    """A raw POST as the rules want it (JSON, Host 127.0.0.1), ``extra`` header lines added."""
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"%s\r\n" % (path.encode(), ctype, len(body), extra)
    ) + body


# -- an evil node ---------------------------------------------------------------------------

EVIL_MODEL = "evil-m"


class EvilUpstream:
    """A node on 127.0.0.1 that looks like an OpenAI-compatible server to the polls and
    answers every POST with whatever ``on_post`` writes (then closes the connection)."""

    def __init__(self) -> None:
        self.on_post: Callable[[asyncio.StreamWriter], Awaitable[None]] = self.answer_bytes(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        self.posts = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @staticmethod
    def answer_bytes(data: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
        async def write(w: asyncio.StreamWriter) -> None:
            w.write(data)
            await w.drain()

        return write

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.add(w)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                first = head.split(b"\r\n", 1)[0].split(b" ")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await r.readexactly(length)
                if first[0] == b"POST":
                    self.posts += 1
                    await self.on_post(w)
                    break
                path = first[1].split(b"?", 1)[0]
                if path == b"/v1/models":
                    body = b'{"object": "list", "data": [{"id": "%s"}]}' % EVIL_MODEL.encode()
                    w.write(_ok(body))
                elif path == b"/health":
                    w.write(_ok(b"{}"))
                else:
                    w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the test's loop is closing: nothing more to answer
        finally:
            self._writers.discard(w)
            w.close()


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
