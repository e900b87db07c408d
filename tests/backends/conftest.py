"""Shared helpers for backend tests: captured payloads and simulator-backed adapters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmtui.backends import Backend, backend_for
from lmtui.config import NodeConfig
from lmtui.core.model import NodeObservation
from lmtui.sim import SimCluster

#: Payloads captured from real servers. CI lays ``shared/`` beside the checkout.
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


@pytest.fixture
def llama_payload() -> Callable[[str], Any]:
    """Load ``llama-server/<relpath>``: JSON decoded, ``.txt`` as text."""

    def load(relpath: str) -> Any:
        path = FIXTURES / "llama-server" / relpath
        text = path.read_text(encoding="utf-8")
        return text if path.suffix == ".txt" else json.loads(text)

    return load


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """One shared client, as the engine has; records every request path it sends."""
    sent: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        client.sent = sent  # type: ignore[attr-defined]
        yield client


MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]


@pytest.fixture
def make_backend(http: httpx.AsyncClient) -> MakeBackend:
    """Build the adapter for a simulated node from a NodeConfig, as the engine does.

    ``make_backend(cluster, name, timeout=2.0, **node_config_fields)``.
    """

    def make(cluster: SimCluster, name: str, *, timeout: float = 2.0, **config: Any) -> Backend:
        node = cluster.node(name)
        cfg = NodeConfig(name=name, kind=node.spec.kind, url=cluster.url(name), **config)
        return backend_for(cfg, http, timeout=timeout)

    return make


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
