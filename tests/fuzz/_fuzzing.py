"""Helpers for the fuzz tests: a live lmtui over simulated nodes on loopback, in the test's
own event loop (``live``) or in a thread of its own (``LiveThread``, for the synchronous
callers schemathesis and hypothesis are), and a raw HTTP/1.1 connection.

Imported as a plain module (tests/ has no packages), hence the name no other test
directory uses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
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
    extra_nodes: list[NodeConfig] | None = None,
) -> AsyncIterator[tuple[SimCluster, Engine]]:
    """Simulated nodes and an engine routing to them on 127.0.0.1, every node polled once."""
    specs = cluster_specs() if specs is None else specs
    async with SimCluster(specs, time_scale=0.01) as cluster:
        nodes = [
            NodeConfig(
                name=s.name,
                kind=s.kind,
                url=cluster.url(s.name),
                memory_gb=s.memory_gb,
                slots=s.parallel if s.kind is NodeKind.OLLAMA else None,
            )
            for s in specs
        ] + list(extra_nodes or [])
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
