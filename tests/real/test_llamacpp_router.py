"""The llama.cpp adapter against a real router-mode ``llama-server`` (``--models-max 1``):
the instance limit, a load that returns only once loaded, and a load refused at the limit
while the resident model is busy (LoadDeferred). What the simulator imitates, checked on the
real thing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from llama import LlamaBuild, LlamaServer, models_dir

from lmtui.backends import backend_for
from lmtui.backends.base import BackendBadResponse, LoadDeferred
from lmtui.backends.llamacpp import LlamaCppBackend
from lmtui.config import NodeConfig
from lmtui.core.model import InstanceState, NodeKind
from lmtui.http import Pool


@pytest.fixture
async def pools() -> AsyncIterator[list[Pool]]:
    """The adapters' keep-alive pools, closed after the test."""
    made: list[Pool] = []
    yield made
    for pool in made:
        await pool.close()


def router(tmp_path: Path, build: LlamaBuild, servers: list[LlamaServer]) -> LlamaServer:
    d = models_dir(tmp_path, build, ["ulysses", "eternal"])
    server = LlamaServer(
        build, ["--models-dir", str(d), "--models-max", "1", "-c", "2048"], tmp_path / "log"
    )
    servers.append(server)
    return server.start()


def adapter(server: LlamaServer, pools: list[Pool]) -> LlamaCppBackend:
    cfg = NodeConfig(name="real", kind=NodeKind.LLAMACPP, url=server.url)
    backend = backend_for(cfg, timeout=10.0)
    pools.append(backend.pool)
    assert isinstance(backend, LlamaCppBackend)
    return backend


async def test_router_limit_and_a_load_that_returns_once_loaded(
    tmp_path: Path,
    llama_build: LlamaBuild,
    llama_servers: list[LlamaServer],
    pools: list[Pool],
) -> None:
    backend = adapter(router(tmp_path, llama_build, llama_servers), pools)
    obs = await backend.poll(time.time())
    assert obs.max_instances == 1 and obs.instances == ()
    assert await backend.load("ulysses") == "ulysses"
    # No poll in between: load() itself waited until /models said loaded.
    obs = await backend.poll(time.time())
    assert [(i.model, i.state, i.size_source) for i in obs.instances or ()] == [
        ("ulysses", InstanceState.LOADED, "server")
    ]
    # At the limit with the resident model idle, the router unloads it for the new one.
    assert await backend.load("eternal") == "eternal"
    obs = await backend.poll(time.time())
    assert [(i.model, i.state) for i in obs.instances or ()] == [("eternal", InstanceState.LOADED)]
    sizes = {a.key: a.size_source for a in obs.available or ()}
    assert sizes == {"eternal": "server", "ulysses": "seen"}
    # Loading what is loaded posts nothing (the router would answer 400 "already running").
    assert await backend.load("eternal") == "eternal"
    # The router answers an unload before the process is gone (a load at once would be
    # refused "model limit reached"): unload() waits, so an eviction then a load works.
    await backend.unload("eternal", "eternal")
    assert await backend.load("ulysses") == "ulysses"


async def test_router_load_at_the_limit_while_busy_is_deferred(
    tmp_path: Path,
    llama_build: LlamaBuild,
    llama_servers: list[LlamaServer],
    pools: list[Pool],
) -> None:
    server = router(tmp_path, llama_build, llama_servers)
    backend = adapter(server, pools)
    await backend.poll(time.time())
    await backend.load("ulysses")
    assert server.proc is not None
    (child,) = psutil.Process(server.proc.pid).children()
    # Freeze the model's process with a request on it: the router counts the request as
    # running, so ulysses is busy for as long as we like (how the capture was made).
    async with httpx.AsyncClient(timeout=60.0) as http:
        body = {
            "model": "ulysses",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
        }
        child.send_signal(signal.SIGSTOP)
        try:
            chat = asyncio.create_task(http.post(server.url + "/v1/chat/completions", json=body))
            await asyncio.sleep(0.5)  # the router has taken the request before we load
            with pytest.raises(LoadDeferred, match="model limit reached"):
                await backend.load("eternal")
        finally:
            child.send_signal(signal.SIGCONT)
        assert (await chat).status_code == 200
    # Transient: once ulysses is idle the same load goes through.
    assert await backend.load("eternal") == "eternal"


async def test_single_server_started_with_a_path_names_the_model_by_its_file(
    tmp_path: Path,
    llama_build: LlamaBuild,
    llama_servers: list[LlamaServer],
    pools: list[Pool],
) -> None:
    d = models_dir(tmp_path, llama_build, ["Gemma-Small"])
    server = LlamaServer(llama_build, ["-m", str(d / "Gemma-Small.gguf")], tmp_path / "log")
    llama_servers.append(server)
    server.start()
    obs = await adapter(server, pools).poll(time.time())
    assert [i.model for i in obs.instances or ()] == ["Gemma-Small"]


async def test_router_load_of_a_broken_model_fails_with_the_routers_reason(
    tmp_path: Path,
    llama_build: LlamaBuild,
    llama_servers: list[LlamaServer],
    pools: list[Pool],
) -> None:
    d = models_dir(tmp_path, llama_build, ["ulysses"])
    (d / "broken.gguf").write_bytes(b"not a gguf file")
    server = LlamaServer(llama_build, ["--models-dir", str(d)], tmp_path / "log")
    llama_servers.append(server)
    backend = adapter(server.start(), pools)
    await backend.poll(time.time())
    # The router accepts the load, its model process exits, /models says failed.
    with pytest.raises(BackendBadResponse, match=r"broken.*failed"):
        await backend.load("broken")
    obs = await backend.poll(time.time())
    (inst,) = [i for i in obs.instances or () if i.model == "broken"]
    assert inst.state is InstanceState.FAILED and inst.error


async def test_router_sleeping_model_keeps_its_slots_and_is_not_woken_by_polls(
    tmp_path: Path,
    llama_build: LlamaBuild,
    llama_servers: list[LlamaServer],
    pools: list[Pool],
) -> None:
    d = models_dir(tmp_path, llama_build, ["ulysses"])
    args = ["--models-dir", str(d), "--sleep-idle-seconds", "1", "-np", "3", "-c", "3072"]
    server = LlamaServer(llama_build, args, tmp_path / "log")
    llama_servers.append(server)
    backend = adapter(server.start(), pools)
    await backend.poll(time.time())
    await backend.load("ulysses")

    async def status(http: httpx.AsyncClient) -> str:
        entries = (await http.get(server.url + "/models")).json()["data"]
        return {m["id"]: m["status"]["value"] for m in entries}["ulysses"]

    async with httpx.AsyncClient(timeout=10.0) as http:
        async with asyncio.timeout(30):
            while await status(http) != "sleeping":
                await asyncio.sleep(0.1)
        for _ in range(3):
            obs = await backend.poll(time.time())
            (inst,) = obs.instances or ()
            assert (inst.state, inst.slots_total) == (InstanceState.LOADED, 3)
        # /slots would have woken it (measured); the adapter asks its /props instead.
        assert await status(http) == "sleeping"


async def test_polls_during_an_unload_do_not_load_the_model_again(
    tmp_path: Path,
    llama_build: LlamaBuild,
    llama_servers: list[LlamaServer],
    pools: list[Pool],
) -> None:
    """A real router answers ``/slots?model=X`` of a model it is stopping by loading X again.
    Polls that overlap an eviction (the engine polls right after it) must not do that."""
    server = router(tmp_path, llama_build, llama_servers)
    backend = adapter(server, pools)
    await backend.poll(time.time())
    await backend.load("ulysses")
    stop = asyncio.Event()

    async def keep_polling() -> int:
        n = 0
        while not stop.is_set():
            await backend.poll(time.time())
            n += 1
        return n

    pollers = [asyncio.create_task(keep_polling()) for _ in range(2)]
    await asyncio.sleep(0.2)
    await backend.unload("ulysses", "ulysses")  # raises if ulysses came back meanwhile
    await asyncio.sleep(1.0)  # polls go on after it
    stop.set()
    assert min(await asyncio.gather(*pollers)) > 0
    async with httpx.AsyncClient() as h:
        listing = (await h.get(server.url + "/models")).json()["data"]
    assert {m["id"]: m["status"]["value"] for m in listing}["ulysses"] == "unloaded"
