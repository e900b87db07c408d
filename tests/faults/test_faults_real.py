"""Faults of real ``llama-server`` nodes through the router: a node killed with SIGKILL in
the middle of streams, and a node killed while lmtui has a load running on it.

Two router-mode servers (``--models-dir`` with the one small gemma3-270m file under two
names, ``alpha`` and ``beta``, ``--models-max 1``), behind a real Engine on loopback; the
clients are the four of the fault suite. Every request must end in an answer or an explicit
error within its bound, those that had received nothing must be served by the survivor, and
nothing may leak (in-flight counts, queue entries, pending loads, watched attempts).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from _faults import assert_all_ended, assert_no_leaks, burst
from llama import LlamaBuild, LlamaServer, models_dir

from lmtui.config import Config, NodeConfig, PollConfig, PoolConfig, RouterConfig
from lmtui.core.model import Health, InstanceState, NodeKind
from lmtui.engine.engine import Engine

pytestmark = [pytest.mark.slow, pytest.mark.real]

#: A request's own bound: the machine has 2 shared cores and two servers compete on it.
BOUND_S = 120.0


def start(tmp: Path, build: LlamaBuild, name: str) -> LlamaServer:
    d = models_dir(tmp / name, build, ["alpha", "beta"])
    args = ["--models-dir", str(d), "--models-max", "1", "-np", "4", "-c", "4096"]
    return LlamaServer(build, args, tmp / f"{name}.log").start()


@asynccontextmanager
async def engine_over(servers: dict[str, LlamaServer]) -> AsyncIterator[Engine]:
    cfg = Config(
        nodes=[
            NodeConfig(name=n, kind=NodeKind.LLAMACPP, url=s.url, memory_gb=16)
            for n, s in servers.items()
        ],
        poll=PollConfig(interval=0.5, timeout=1.0, down_after=2),
        router=RouterConfig(queue_timeout=90.0, first_byte_timeout=60.0),
        pool=PoolConfig(reserved_gb=0, min_residency=0),
    )
    async with Engine(cfg, listen="127.0.0.1:0") as engine:
        yield engine
        await assert_no_leaks(engine, timeout=15.0)


async def until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_real_node_killed_mid_stream(
    tmp_path: Path, llama_build: LlamaBuild, llama_servers: list[LlamaServer]
) -> None:
    servers = {n: start(tmp_path, llama_build, n) for n in ("n1", "n2")}
    llama_servers += servers.values()
    async with httpx.AsyncClient(timeout=30) as h:
        for s in servers.values():
            await h.post(s.url + "/models/load", json={"model": "alpha"})
    async with engine_over(servers) as engine:
        snap = lambda: engine.store.snapshot  # noqa: E731
        await until(
            lambda: sum(i.model == "alpha" and i.state is InstanceState.LOADED
                        for i in snap().instances.values()) == 2,
            60, "alpha loaded on both",
        )  # fmt: skip
        # Four streams, taking turns over the two replicas; n1 dies once its tokens flow
        # (this machine's shared cores make ~3 tokens/s per stream: 200 take a minute).
        task = asyncio.create_task(
            burst(engine, 4, stream=True, bound=BOUND_S, model="alpha", max_tokens=200)
        )
        assert engine.router is not None
        watched = engine.router._attempts
        await until(
            lambda: any(a.node == "n1" and a.started for a in watched), 60, "a stream on n1"
        )
        servers["n1"].signal(signal.SIGKILL)
        results = await task
        assert_all_ended(results)
        # n1's streams had begun: each ended with an explicit error (no retry after bytes).
        assert any(r.kind == "error" for r in results), results
        assert any(r.ok for r in results), results
        await until(lambda: snap().nodes["n1"].health is Health.DOWN, 30, "n1 down")
        # Later requests: all served by the survivor.
        assert_all_ended(
            await burst(engine, 4, bound=BOUND_S, model="alpha", max_tokens=8), ok=True
        )


async def test_a_real_node_killed_while_a_load_runs_on_it(
    tmp_path: Path, llama_build: LlamaBuild, llama_servers: list[LlamaServer]
) -> None:
    servers = {n: start(tmp_path, llama_build, n) for n in ("n1", "n2")}
    llama_servers += servers.values()
    async with engine_over(servers) as engine:
        d = engine.dispatcher
        # beta is loaded nowhere: the first requests make lmtui load it on one node, which
        # is killed as soon as lmtui's load there is under way.
        task = asyncio.create_task(
            burst(engine, 4, stream=False, bound=BOUND_S, model="beta", max_tokens=8)
        )
        await until(lambda: bool(d.pending_loads), 60, "a load under way")
        ((victim, _model),) = d.pending_loads
        servers[victim].signal(signal.SIGKILL)
        results = await task
        # Nothing had reached these clients: every one is served, by the other node.
        assert_all_ended(results, ok=True)
        survivor = "n2" if victim == "n1" else "n1"
        # The kill hit the load (it failed) or the requests it had just let through.
        hit = [
            e.message
            for e in engine.store.events
            if e.node == victim and ("load of beta" in e.message or "first byte" in e.message)
        ]
        assert hit, [e.message for e in engine.store.events]
        assert any(
            i.node == survivor and i.model == "beta" and i.state is InstanceState.LOADED
            for i in engine.store.snapshot.instances.values()
        )
