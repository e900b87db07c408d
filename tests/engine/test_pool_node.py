"""A ``llamacpp-pool`` node end to end with a fake ``llama-server`` (no real build needed):
start on demand, route through the router, stop, fail a start with its log, adopt after a
crash, never touch a stranger."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from lmtui.backends import backend_for
from lmtui.backends.base import BackendBadResponse
from lmtui.backends.llamacpp_pool import LlamaCppPoolBackend
from lmtui.config import Config, NodeConfig, PollConfig, PoolConfig, PoolNodeConfig
from lmtui.core.model import InstanceState, NodeKind
from lmtui.engine.commands import Unload
from lmtui.engine.engine import Engine

FAKE = Path(__file__).with_name("fake_llama_server.py")
STEP_S = 20.0


def free_range(n: int = 8) -> str:
    """A run of ``n`` ports that nothing listens on now (best effort)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        ok = True
        for p in range(first, first + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return f"{first}-{first + n - 1}"
    raise RuntimeError("no free port range")


def pool_backend(node: NodeConfig) -> LlamaCppPoolBackend:
    """The adapter as the engine builds it: its pool, and its node's key from the environment."""
    backend = backend_for(node, timeout=3.0)
    assert isinstance(backend, LlamaCppPoolBackend)
    return backend


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def models(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    (d / "alpha.gguf").write_bytes(b"a" * 1000)
    (d / "beta.gguf").write_bytes(b"b" * 2000)
    return d


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test saw; any still running at the end are killed (and fail the test)."""
    seen: list[int] = []
    yield seen
    left = [p for p in seen if running(p)]
    for p in left:
        psutil.Process(p).kill()
    assert left == [], "servers left running"


def pool_node(tmp_path: Path, models: Path, **pool: Any) -> NodeConfig:
    settings: dict[str, Any] = {
        "binary": str(FAKE),
        "models_dir": str(models),
        "ports": free_range(),
        "state_dir": str(tmp_path / "state"),
        "start_timeout": 10.0,
        "stop_grace": 2.0,
    }
    cfg = PoolNodeConfig(**{**settings, **pool})
    return NodeConfig(
        name="pool", kind=NodeKind.LLAMACPP_POOL, url="http://127.0.0.1:1", memory_gb=64, pool=cfg
    )


def config(node: NodeConfig) -> Config:
    return Config(
        nodes=[node], poll=PollConfig(interval=0.2, timeout=2.0), pool=PoolConfig(reserved_gb=0)
    )


async def test_the_engine_starts_routes_to_and_stops_a_server(
    tmp_path: Path, models: Path, pids: list[int]
) -> None:
    node = pool_node(tmp_path, models, args=["--fake-delay", "0.3"])
    async with asyncio.timeout(STEP_S), Engine(config(node), listen="127.0.0.1:0") as engine:
        await engine.poller.poll_once("pool")
        snap = engine.store.snapshot
        assert snap.nodes["pool"].health.value == "healthy"  # no server yet, still healthy
        assert {(a.key, a.size_bytes) for a in snap.nodes["pool"].available} == {
            ("alpha", 1000),
            ("beta", 2000),
        }
        url = engine.router_url
        async with httpx.AsyncClient(base_url=str(url), timeout=STEP_S) as http:
            r = await http.post(
                "/v1/chat/completions",
                json={"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200, r.text
            port = int(node.pool.ports.split("-")[0])  # type: ignore[union-attr]
            assert r.json()["choices"][0]["message"]["content"] == f"hello from {port}"
            (inst,) = engine.store.snapshot.instances_on("pool")
            assert (inst.instance_id, inst.state, inst.url) == (
                f"alpha@{port}",
                InstanceState.LOADED,
                f"http://127.0.0.1:{port}",
            )
            assert inst.slots_total == 2  # from the server's /props
            procs = (await http.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
            assert [(p["model"], p["port"], p["state"]) for p in procs] == [
                ("alpha", port, "ready")
            ]
            assert any("server is listening" in ln for ln in procs[0]["last_lines"])
            pids.append(procs[0]["pid"])
            assert running(procs[0]["pid"])
            await engine.controller.execute(Unload(node="pool", instance_id=inst.instance_id))
            assert not running(procs[0]["pid"])
            assert not (tmp_path / "state" / f"pool-{port}.json").exists()
            # A second load lands on a port again; the clean stop below ends it.
            r = await http.post(
                "/v1/chat/completions",
                json={"model": "beta", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200, r.text
            procs = (await http.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
            pids.append(procs[0]["pid"])
            assert (await http.get("/lmtui/v1/nodes/nope/processes")).status_code == 404
    assert not running(pids[-1]), "a clean engine stop stops its servers"


async def test_a_failed_start_raises_with_the_log_and_leaves_nothing(
    tmp_path: Path, models: Path
) -> None:
    backend = pool_backend(pool_node(tmp_path, models, args=["--fake-exit"]))
    try:
        async with asyncio.timeout(STEP_S):
            await backend.poll(0.0)
            with pytest.raises(BackendBadResponse) as info:
                await backend.load("alpha")
        msg = str(info.value)
        assert "did not start" in msg and "the process exited" in msg
        assert "error: fake failure loading" in msg
        assert backend.servers == {}
        assert list((tmp_path / "state").glob("*.json")) == []
        with pytest.raises(BackendBadResponse, match="no model 'nope'"):
            await backend.load("nope")
    finally:
        await backend.aclose()


async def test_a_taken_port_is_skipped(tmp_path: Path, models: Path, pids: list[int]) -> None:
    ports = free_range()
    first = int(ports.split("-")[0])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        backend = pool_backend(pool_node(tmp_path, models, ports=ports))
        try:
            async with asyncio.timeout(STEP_S):
                await backend.poll(0.0)
                assert await backend.load("alpha") == f"alpha@{first + 1}"
                pids.extend(s.pid for s in backend.servers.values() if s.pid)
        finally:
            await backend.aclose()


async def test_a_server_that_ignores_sigterm_is_killed(
    tmp_path: Path, models: Path, pids: list[int]
) -> None:
    node = pool_node(tmp_path, models, args=["--fake-ignore-term"], stop_grace=0.3)
    backend = pool_backend(node)
    try:
        async with asyncio.timeout(STEP_S):
            await backend.poll(0.0)
            iid = await backend.load("alpha")
            (srv,) = backend.servers.values()
            assert srv.pid is not None
            pids.append(srv.pid)
            await backend.unload("alpha", iid)
            assert not running(srv.pid)
    finally:
        await backend.aclose()


async def test_after_a_crash_servers_are_adopted_or_stopped(
    tmp_path: Path, models: Path, pids: list[int]
) -> None:
    node = pool_node(tmp_path, models)
    first = pool_backend(node)
    async with asyncio.timeout(STEP_S):
        await first.poll(0.0)
        a = await first.load("alpha")
        b = await first.load("beta")
        pids.extend(s.pid for s in first.servers.values() if s.pid)
        await first.procs.close()  # "crash": forget everything, stop nothing
        # beta's file disappears from the catalogue while lmtui is down.
        (models / "beta.gguf").unlink()
        # A stale pid file whose pid now belongs to a stranger: neither adopted nor killed.
        stranger = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(30)"
        )
        try:
            stale = {
                "pid": stranger.pid,
                "node": "pool",
                "model": "alpha",
                "path": str(models / "alpha.gguf"),
                "port": 1,
                "started": 0,
                "marker": "x",
            }
            (tmp_path / "state" / "pool-1.json").write_bytes(msgspec.json.encode(stale))
            second = pool_backend(node)
            try:
                # Two first polls at once (the loop's and a refresh): one adoption.
                obs, again = await asyncio.gather(second.poll(1.0), second.poll(1.0))
                assert obs.instances == again.instances
                assert [(i.instance_id, i.state) for i in obs.instances or ()] == [
                    (a, InstanceState.LOADED)
                ]
                assert second.servers[int(a.split("@")[1])].adopted
                assert running(stranger.pid)
                assert not (tmp_path / "state" / "pool-1.json").exists()
                beta_pid = pids[1]
                assert not running(beta_pid), f"{b} is no longer wanted: stopped"
                # The adopted server still answers, at its URL.
                (inst,) = obs.instances or ()
                assert inst.url is not None
                async with httpx.AsyncClient(timeout=5) as http:
                    assert (await http.get(inst.url + "/health")).status_code == 200
            finally:
                await second.aclose()
            assert not any(running(p) for p in pids)
            assert running(stranger.pid)
        finally:
            stranger.kill()
            await stranger.wait()


async def test_a_server_that_dies_disappears(tmp_path: Path, models: Path) -> None:
    backend = pool_backend(pool_node(tmp_path, models))
    try:
        async with asyncio.timeout(STEP_S):
            await backend.poll(0.0)
            await backend.load("alpha")
            (srv,) = backend.servers.values()
            assert srv.pid is not None
            psutil.Process(srv.pid).kill()
            while running(srv.pid):
                await asyncio.sleep(0.05)
            obs = await backend.poll(1.0)
            assert obs.instances == ()
            assert backend.servers == {}
    finally:
        await backend.aclose()


async def test_the_api_key_reaches_the_server_by_environment(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch, pids: list[int]
) -> None:
    monkeypatch.setenv("LMTUI_TEST_POOL_KEY", "s3cret-key")
    node = msgspec.structs.replace(pool_node(tmp_path, models), api_key_env="LMTUI_TEST_POOL_KEY")
    backend = pool_backend(node)
    try:
        async with asyncio.timeout(STEP_S):
            await backend.poll(0.0)
            await backend.load("alpha")
            (srv,) = backend.servers.values()
            assert srv.pid is not None
            pids.append(srv.pid)
            assert "s3cret-key" not in " ".join(psutil.Process(srv.pid).cmdline())
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(srv.url + "/props")).status_code == 401
            obs = await backend.poll(1.0)  # lmtui's own polls carry the key
            (inst,) = obs.instances or ()
            assert inst.slots_total == 2
    finally:
        await backend.aclose()


async def test_replicas_of_one_model_run_on_their_own_ports(
    tmp_path: Path, models: Path, pids: list[int]
) -> None:
    backend = pool_backend(pool_node(tmp_path, models))
    try:
        async with asyncio.timeout(STEP_S):
            await backend.poll(0.0)
            first, second = await asyncio.gather(backend.load("alpha"), backend.load("alpha"))
            pids.extend(s.pid for s in backend.servers.values() if s.pid)
            assert first != second and first.split("@")[0] == second.split("@")[0] == "alpha"
            obs = await backend.poll(1.0)
            insts = {i.instance_id: i for i in obs.instances or ()}
            assert set(insts) == {first, second}
            assert len({i.url for i in insts.values()}) == 2
            assert all(i.state is InstanceState.LOADED for i in insts.values())
            await backend.unload("alpha", first)
            assert [i.instance_id for i in (await backend.poll(2.0)).instances or ()] == [second]
    finally:
        await backend.aclose()


async def test_a_start_past_its_timeout_fails_and_is_killed(
    tmp_path: Path, models: Path, pids: list[int]
) -> None:
    node = pool_node(tmp_path, models, args=["--fake-delay", "30"], start_timeout=0.5)
    backend = pool_backend(node)
    try:
        async with asyncio.timeout(STEP_S):
            await backend.poll(0.0)
            load = asyncio.create_task(backend.load("alpha"))
            while not backend.servers or next(iter(backend.servers.values())).pid is None:
                await asyncio.sleep(0.01)
            pid = next(iter(backend.servers.values())).pid
            assert pid is not None
            pids.append(pid)
            obs = await backend.poll(1.0)  # meanwhile it shows as loading
            assert [i.state for i in obs.instances or ()] == [InstanceState.LOADING]
            with pytest.raises(BackendBadResponse, match=r"not ready within 0\.5 s"):
                await load
            assert not running(pid) and backend.servers == {}
    finally:
        await backend.aclose()
