"""Shared helpers for backend tests: captured payloads and simulator-backed adapters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmtui.backends import Backend, backend_for
from lmtui.backends.base import poll_pool
from lmtui.config import NodeConfig
from lmtui.core.model import NodeObservation
from lmtui.http import Pool, TlsResponse, TlsUpstreamPool
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


class RecordingTlsPool(TlsUpstreamPool):
    """The aiohttp pool ``https`` nodes get, recording the path of every request it sends
    (without the query)."""

    def __init__(self, base_url: str, sent: list[str], **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self.sent = sent

    async def request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> TlsResponse:
        self.sent.append(path.partition("?")[0])
        return await super().request(method, path, body, headers)


@pytest.fixture
def sent() -> list[str]:
    """The paths the adapters built with ``lean=False`` sent."""
    return []


@pytest.fixture
async def http(sent: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    """A separate client for tests to talk to the simulator themselves. ``http.sent`` is the
    list of paths the adapters sent through the aiohttp pool."""
    async with httpx.AsyncClient() as client:
        client.sent = sent  # type: ignore[attr-defined]
        yield client


MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]


@pytest.fixture
async def make_backend(sent: list[str]) -> AsyncIterator[MakeBackend]:
    """Build the adapter for a simulated node from a NodeConfig, as the engine does: with
    the lean keep-alive pool for plain HTTP, or with ``lean=False`` through the aiohttp pool
    that ``https`` nodes get (whose request paths ``http.sent`` records).

    ``make_backend(cluster, name, timeout=2.0, lean=True, **node_config_fields)``.
    """
    pools: list[Pool] = []

    def make(
        cluster: SimCluster, name: str, *, timeout: float = 2.0, lean: bool = True, **config: Any
    ) -> Backend:
        node = cluster.node(name)
        cfg = NodeConfig(name=name, kind=node.spec.kind, url=cluster.url(name), **config)
        pool: Pool = (
            poll_pool(cfg.url, connect_timeout=timeout)
            if lean
            else RecordingTlsPool(
                cfg.url, sent, max_connections=16, connect_timeout=timeout, read_timeout=None
            )
        )
        pools.append(pool)
        return backend_for(cfg, timeout=timeout, pool=pool)

    yield make
    for pool in pools:
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
