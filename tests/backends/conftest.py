"""Shared helpers for backend tests: captured payloads and simulator-backed adapters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from lmtui.backends import Backend, backend_for
from lmtui.backends.base import new_pool
from lmtui.config import NodeConfig
from lmtui.core.model import NodeObservation
from lmtui.sim import SimCluster

#: Payloads captured from real servers (the project's own copy; see its README).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def llama_payload() -> Callable[[str], Any]:
    """Load ``llama-server/<relpath>``: JSON decoded, ``.txt`` as text."""

    def load(relpath: str) -> Any:
        path = FIXTURES / "llama-server" / relpath
        text = path.read_text(encoding="utf-8")
        return text if path.suffix == ".txt" else json.loads(text)

    return load


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The adapters' session, as the engine makes it; records every request path it sends."""
    sent: list[str] = []

    async def record(_s: object, _ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        sent.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(record)
    async with aiohttp.ClientSession(trace_configs=[trace]) as s:
        s.sent = sent  # type: ignore[attr-defined]
        yield s


@pytest.fixture
async def http(session: aiohttp.ClientSession) -> AsyncIterator[httpx.AsyncClient]:
    """A separate client for tests to talk to the simulator themselves. ``http.sent`` is the
    list of paths the adapters sent."""
    async with httpx.AsyncClient() as client:
        client.sent = session.sent  # type: ignore[attr-defined]
        yield client


MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]


@pytest.fixture
async def make_backend(session: aiohttp.ClientSession) -> AsyncIterator[MakeBackend]:
    """Build the adapter for a simulated node from a NodeConfig, as the engine does: with
    the lean keep-alive pool for plain HTTP, or with ``lean=False`` through the aiohttp
    session alone (whose request paths ``http.sent`` records).

    ``make_backend(cluster, name, timeout=2.0, lean=True, **node_config_fields)``.
    """
    pools = []

    def make(
        cluster: SimCluster, name: str, *, timeout: float = 2.0, lean: bool = True, **config: Any
    ) -> Backend:
        node = cluster.node(name)
        cfg = NodeConfig(name=name, kind=node.spec.kind, url=cluster.url(name), **config)
        backend = backend_for(cfg, session, timeout=timeout)
        if lean:
            backend.pool = new_pool(backend.base_url, connect_timeout=timeout)
            pools.append(backend.pool)
        return backend

    yield make
    for pool in pools:
        if pool is not None:
            await pool.close()


async def _poll_until(
    backend: Backend, check: Callable[[NodeObservation], bool], *, limit_s: float = 5.0
) -> NodeObservation:
    async with asyncio.timeout(limit_s):
        while True:
            obs = await backend.poll(time.time())
            if check(obs):
                return obs
            await asyncio.sleep(0.02)


@pytest.fixture
def poll_until() -> PollUntil:
    """``await poll_until(backend, check)``: poll until ``check(obs)`` holds (bounded)."""
    return _poll_until
