"""Fixtures that run the engine's router over simulated nodes on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai

from lmtui.config import (
    Config,
    ModelConfig,
    NodeConfig,
    PeerConfig,
    PollConfig,
    PoolConfig,
    RouterConfig,
)
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimNodeSpec


@asynccontextmanager
async def routed(
    specs: list[SimNodeSpec],
    *,
    time_scale: float = 0.01,
    router: RouterConfig | None = None,
    models: list[ModelConfig] | None = None,
    pool: PoolConfig | None = None,
    request_log: Path | None = None,
    node_overrides: dict[str, dict[str, Any]] | None = None,
    peers: list[PeerConfig] | None = None,
) -> AsyncIterator[tuple[SimCluster, Engine]]:
    """Simulated nodes + an engine routing to them, with one poll of every node done."""
    async with SimCluster(specs, time_scale=time_scale) as cluster:
        nodes = [
            NodeConfig(
                name=s.name,
                kind=s.kind,
                url=cluster.url(s.name),
                memory_gb=s.memory_gb,
                slots=s.parallel if s.kind.value == "ollama" else None,
                **(node_overrides or {}).get(s.name, {}),
            )
            for s in specs
        ]
        cfg = Config(
            nodes=nodes,
            poll=PollConfig(interval=0.2, timeout=1.0),
            router=router or RouterConfig(),
            models=models or [],
            pool=pool or PoolConfig(reserved_gb=0),
            peers=peers or [],
        )
        engine = Engine(cfg, listen="127.0.0.1:0", request_log=request_log)
        async with engine:
            await asyncio.gather(*(engine.poller.poll_once(n.name) for n in nodes))
            yield cluster, engine


def client(engine: Engine, **kw: Any) -> openai.AsyncOpenAI:
    assert engine.router_url is not None
    return openai.AsyncOpenAI(
        base_url=engine.router_url + "/v1",
        api_key=kw.pop("api_key", "x"),
        max_retries=0,
        timeout=kw.pop("timeout", 20.0),
        **kw,
    )


MSG = [{"role": "user", "content": "Say hello in a few words."}]


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
