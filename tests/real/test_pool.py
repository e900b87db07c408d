"""``llamacpp-pool`` against the real ``llama-server``: lmtui starts, routes to, evicts and
idles out real servers, locally and over a real OpenSSH sshd, and leaves no orphan after
``kill -9`` (the restarted lmtui adopts the server; a clean stop ends it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from llama import LlamaBuild, free_port, models_dir

from lmtui.config import (
    Config,
    NodeConfig,
    PollConfig,
    PoolConfig,
    PoolNodeConfig,
    SshConfig,
)
from lmtui.core.model import InstanceState, NodeKind
from lmtui.engine.engine import Engine

# The SSH fixtures live with the e2e tests; import them from there without moving them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from sshd import SSHD, Sshd, keygen

#: Bound of any one wait (a start of the 270M model takes about a second here).
STEP_S = 60.0
MODELS = ["gemma-a", "gemma-b"]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_range() -> str:
    first = free_port()
    return f"{first}-{min(65535, first + 9)}"


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Server pids a test saw: any still running at teardown is killed and fails it."""
    seen: list[int] = []
    yield seen
    left = [p for p in seen if running(p)]
    for p in left:
        psutil.Process(p).kill()
    assert left == [], "llama-server processes were left running"


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not SSHD.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SSHD} not found (apt-get install -y openssh-server)")
        pytest.skip(f"{SSHD} not found: apt-get install -y openssh-server")
    key = keygen(tmp_path_factory.mktemp("ssh-client") / "id_ed25519")
    server = Sshd(tmp_path_factory.mktemp("sshd"), key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ssh_config(server: Sshd, tmp_path: Path) -> SshConfig:
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    return SshConfig(
        host="127.0.0.1",
        port=server.port,
        user=server.user,
        key_file=str(server.client_key),
        known_hosts=str(known),
        timeout=10.0,
    )


def pool_node(
    tmp_path: Path, build: LlamaBuild, *, ssh: SshConfig | None = None, **node: Any
) -> NodeConfig:
    pool = PoolNodeConfig(
        binary=str(build.binary),
        models_dir=str(models_dir(tmp_path, build, MODELS)),
        ports=port_range(),
        args=["-c", "1024", "-np", "1", "-t", "2"],
        state_dir=str(tmp_path / "pool-state"),
        start_timeout=STEP_S,
        stop_grace=5.0,
    )
    return NodeConfig(
        name="pool",
        kind=NodeKind.LLAMACPP_POOL,
        url="http://127.0.0.1:8080",
        ssh=ssh,
        pool=pool,
        **node,
    )


async def wait_for(what: str, check: Any, timeout: float = STEP_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("where", ["local", "ssh"])
async def test_serves_evicts_and_idles_out_real_servers(
    where: str,
    tmp_path: Path,
    llama_build: LlamaBuild,
    request: pytest.FixtureRequest,
    pids: list[int],
) -> None:
    ssh = ssh_config(request.getfixturevalue("sshd_server"), tmp_path) if where == "ssh" else None
    # 0.4 GB holds one 253 MB model, not two: the second load evicts the first.
    node = pool_node(tmp_path, llama_build, ssh=ssh, memory_gb=0.4)
    cfg = Config(
        nodes=[node],
        poll=PollConfig(interval=0.5, timeout=5.0),
        pool=PoolConfig(reserved_gb=0, min_residency=0, idle_ttl=3.0),
    )
    async with asyncio.timeout(4 * STEP_S), Engine(cfg, listen="127.0.0.1:0") as engine:
        await engine.poller.poll_once("pool")
        assert engine.store.snapshot.nodes["pool"].health.value == "healthy"
        assert {a.key for a in engine.store.snapshot.nodes["pool"].available} == set(MODELS)
        client = openai.AsyncOpenAI(
            base_url=f"{engine.router_url}/v1", api_key="x", max_retries=0, timeout=STEP_S
        )
        t0 = time.monotonic()
        r = await client.chat.completions.create(
            model="gemma-a", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        cold = time.monotonic() - t0
        assert r.choices[0].message.content
        async with httpx.AsyncClient(base_url=str(engine.router_url), timeout=10) as http:
            (a,) = (await http.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
        assert (a["model"], a["state"]) == ("gemma-a", "ready")
        assert a["last_lines"], "the server's log is read back"
        pids.append(a["pid"])
        print(f"\n[{where}] cold request through lmtui (start + chat): {cold:.2f} s")
        (inst,) = engine.store.snapshot.instances_on("pool")
        assert inst.url == f"http://127.0.0.1:{a['port']}" and inst.state is InstanceState.LOADED

        r = await client.chat.completions.create(
            model="gemma-b", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert r.choices[0].message.content
        assert not running(a["pid"]), "gemma-a was evicted to make room for gemma-b"
        async with httpx.AsyncClient(base_url=str(engine.router_url), timeout=10) as http:
            (b,) = (await http.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
        assert b["model"] == "gemma-b"
        pids.append(b["pid"])

        # Idle past [pool] idle_ttl: the server is stopped.
        await wait_for("the idle TTL", lambda: not running(b["pid"]))
        await wait_for(
            "the instance to go", lambda: not list(engine.store.snapshot.instances_on("pool"))
        )
    assert list((tmp_path / "pool-state").glob("*.json")) == []


def _serve(cfg: Path, port: int, tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmtui",
                "--serve",
                "--config",
                str(cfg),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def _processes(base: str) -> list[dict[str, Any]]:
    try:
        r = httpx.get(f"{base}/lmtui/v1/nodes/pool/processes", timeout=5)
    except httpx.HTTPError:
        return []
    return list(r.json()["processes"]) if r.status_code == 200 else []


def _wait_sync(what: str, check: Any, timeout: float = STEP_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_orphan_after_kill_9_and_restart(
    tmp_path: Path, llama_build: LlamaBuild, pids: list[int]
) -> None:
    node = pool_node(tmp_path, llama_build)
    assert node.pool is not None
    cfg = tmp_path / "lmtui.toml"
    cfg.write_text(
        f"""
[[nodes]]
name = "pool"
kind = "llamacpp-pool"
url = "http://127.0.0.1:8080"
memory_gb = 8
[nodes.pool]
binary = "{node.pool.binary}"
models_dir = "{node.pool.models_dir}"
ports = "{node.pool.ports}"
args = ["-c", "1024", "-np", "1", "-t", "2"]
state_dir = "{node.pool.state_dir}"
stop_grace = 5.0

[poll]
interval = 0.3

[pool]
reserved_gb = 0
"""
    )
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = _serve(cfg, port, tmp_path, log)
    try:
        _wait_sync("the router", lambda: _processes(base) == [] and _up(base))
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=STEP_S)
        r = chat.chat.completions.create(
            model="gemma-a", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert r.choices[0].message.content
        (proc,) = _processes(base)
        pids.append(proc["pid"])
        serve.kill()  # SIGKILL: lmtui gets no chance to stop anything
        serve.wait(timeout=10)
        assert running(proc["pid"]), "the server outlives a killed lmtui"

        serve = _serve(cfg, port, tmp_path, log)
        _wait_sync("the router again", lambda: _up(base))
        adopted = _wait_sync(
            "adoption",
            lambda: [p for p in _processes(base) if p["state"] == "ready"],
        )
        assert [(p["pid"], p["port"], p["adopted"]) for p in adopted] == [
            (proc["pid"], proc["port"], True)
        ]
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=STEP_S)
        r = chat.chat.completions.create(
            model="gemma-a", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert r.choices[0].message.content
        assert [p["pid"] for p in _processes(base)] == [proc["pid"]], "no second server"

        serve.send_signal(signal.SIGTERM)  # a clean stop stops the servers
        assert serve.wait(timeout=STEP_S) == 0, log.read_text()[-3000:]
        assert not running(proc["pid"])
        assert list(Path(str(node.pool.state_dir)).glob("*.json")) == []
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=10)


def _up(base: str) -> bool:
    """The router answers and lists the pool's models (the node was polled)."""
    try:
        r = httpx.get(f"{base}/v1/models", timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and "gemma-a" in {m["id"] for m in r.json()["data"]}


@pytest.mark.parametrize("where", ["local", "ssh"])
async def test_the_api_key_reaches_a_real_server_through_its_environment(
    where: str,
    tmp_path: Path,
    llama_build: LlamaBuild,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    pids: list[int],
) -> None:
    """This build documents ``--api-key`` as env ``LLAMA_API_KEY`` (not ``LLAMA_ARG_API_KEY``):
    the server must refuse a keyless /props, and lmtui's own polls must carry the key."""
    from lmtui.backends import backend_for
    from lmtui.backends.llamacpp_pool import LlamaCppPoolBackend

    monkeypatch.setenv("LMTUI_TEST_POOL_KEY", "real-s3cret")
    ssh = ssh_config(request.getfixturevalue("sshd_server"), tmp_path) if where == "ssh" else None
    node = pool_node(tmp_path, llama_build, ssh=ssh, api_key_env="LMTUI_TEST_POOL_KEY")
    backend = backend_for(node, timeout=3.0)
    assert isinstance(backend, LlamaCppPoolBackend)
    try:
        async with asyncio.timeout(2 * STEP_S):
            await backend.poll(0.0)
            await backend.load("gemma-a")
            (srv,) = backend.servers.values()
            assert srv.pid is not None
            pids.append(srv.pid)
            assert "real-s3cret" not in " ".join(psutil.Process(srv.pid).cmdline())
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as http:
                assert (await http.get("/props")).status_code == 401
                auth = {"Authorization": "Bearer real-s3cret"}
                assert (await http.get("/props", headers=auth)).status_code == 200
            obs = await backend.poll(1.0)
            (inst,) = obs.instances or ()
            assert inst.state is InstanceState.LOADED and inst.slots_total == 1
    finally:
        await backend.aclose()
    assert not running(pids[0])


async def test_an_ssh_pool_node_is_healthy_exactly_while_its_host_answers(
    tmp_path: Path, llama_build: LlamaBuild, sshd_server: Sshd
) -> None:
    """The backend alone, no poll loop: sshd is stopped only between commands (stopping it
    kills its sessions, and one killed inside the login shell's rc files can leave locks
    behind, e.g. pyenv's rehash lock, which then stalls every later login for 60 s)."""
    from lmtui.backends import backend_for
    from lmtui.backends.base import BackendUnreachable
    from lmtui.backends.llamacpp_pool import LlamaCppPoolBackend

    node = pool_node(tmp_path, llama_build, ssh=ssh_config(sshd_server, tmp_path), memory_gb=8)
    backend = backend_for(node, timeout=5.0)
    assert isinstance(backend, LlamaCppPoolBackend)
    try:
        async with asyncio.timeout(STEP_S):
            obs = await backend.poll(0.0)  # no server: still a good poll
            assert obs.instances == () and {a.key for a in obs.available or ()} == set(MODELS)
            sshd_server.stop()
            try:
                with pytest.raises(BackendUnreachable):
                    await backend.poll(1.0)
            finally:
                sshd_server.start()
            await asyncio.sleep(1.5)  # SshHost waits 1 s after a failed connect
            assert (await backend.poll(2.0)).instances == ()
    finally:
        await backend.aclose()
