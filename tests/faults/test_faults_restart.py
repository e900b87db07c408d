"""lmtui itself killed with SIGKILL mid-traffic and started again: ``lmtui --serve`` as a
subprocess, as a user runs it, over simulated nodes and a ``llamacpp-pool`` node whose
servers (the fake llama-server of tests/engine) outlive it.

What must hold after the restart: the operator's choices (a pin, a drained node, the
strategy) are intact in the overrides file and in force; the request log is a sound SQLite
database holding exactly the requests that finished before the kill (the flusher writes
once a second, so they are given that long) and then the new ones; the pool's server is
adopted (same pid, no second one started) and serves; the clients of the killed process got
a connection error at once rather than a hang; nothing is left in flight anywhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _faults import MSG, assert_all_ended, burst_url, free_port, lms

from lmtui.sim import SimCluster

pytestmark = pytest.mark.slow

FAKE = Path(__file__).resolve().parents[1] / "engine" / "fake_llama_server.py"
#: Bound of any one wait here (a start of lmtui takes about a second).
STEP_S = 30.0


def serve(cfg: Path, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_STATE_HOME": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "data"),
    }
    with (tmp / "serve.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lmtui", "--serve", "--config", str(cfg), "--listen",
             f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip


def config(cluster: SimCluster, tmp: Path) -> Path:
    models = tmp / "models"
    models.mkdir()
    (models / "alpha.gguf").write_bytes(b"a" * 1000)
    nodes = "".join(
        f"""
[[nodes]]
name = "{n.spec.name}"
kind = "lmstudio"
url = "{n.url}"
memory_gb = 64
"""
        for n in cluster.nodes
    )
    first = free_port()
    cfg = tmp / "lmtui.toml"
    cfg.write_text(
        nodes
        + f"""
[[nodes]]
name = "pool"
kind = "llamacpp-pool"
url = "http://127.0.0.1:1"
memory_gb = 64
[nodes.pool]
binary = "{FAKE}"
models_dir = "{models}"
ports = "{first}-{first + 5}"
state_dir = "{tmp / "pool-state"}"
start_timeout = 10.0
stop_grace = 2.0

[poll]
interval = 0.2

[pool]
reserved_gb = 0
"""
    )
    return cfg


async def until(what: str, check: Any, timeout: float = STEP_S) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            try:
                value = await check()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # unreachable: the timeout raises


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return c.execute("SELECT model, node, outcome, status FROM requests ORDER BY id").fetchall()


async def test_lmtui_killed_with_sigkill_and_restarted(tmp_path: Path) -> None:
    specs = [lms("studio", ["m1"]), lms("spare", ["m1"])]
    specs[0].decode_tok_per_s = 20.0
    async with SimCluster(specs, time_scale=1.0) as cluster:
        cfg = config(cluster, tmp_path)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        db = tmp_path / "data" / "lmtui" / "requests.sqlite3"
        overrides = tmp_path / "state" / "lmtui" / "overrides.toml"
        proc = serve(cfg, port, tmp_path)
        h = httpx.AsyncClient(base_url=base, timeout=STEP_S)
        chat = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=STEP_S)
        try:

            async def listed() -> bool:
                ids = {m["id"] for m in (await h.get("/v1/models")).json()["data"]}
                return {"m1", "alpha"} <= ids

            await until("the router", listed)
            # The operator's choices, saved to the overrides file.
            for path, body in [
                ("pin", {"model": "m1"}),
                ("drain", {"node": "spare"}),
                ("strategy", {"strategy": "spread"}),
            ]:
                r = await h.post(f"/lmtui/v1/{path}", json=body)
                assert r.status_code == 200, r.text
            saved = overrides.read_bytes()
            # Traffic: plain requests, and one that starts a pool server.
            for _ in range(6):
                r1 = await chat.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
                assert r1.choices[0].finish_reason
            ra = await chat.chat.completions.create(model="alpha", messages=MSG, max_tokens=4)
            assert ra.choices[0].message.content
            (server,) = (await h.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
            await asyncio.sleep(2.5)  # the request log's flusher: once a second

            # Streams in flight when lmtui dies: their clients see the connection go.
            async def stream() -> str:
                try:
                    s = await chat.chat.completions.create(
                        model="m1", messages=MSG, max_tokens=400, stream=True
                    )
                    async for _chunk in s:
                        pass
                except openai.APIConnectionError:
                    return "connection error"
                return "completed"

            streams = [asyncio.create_task(stream()) for _ in range(3)]
            node = cluster.node("studio")
            await until("streams", lambda: _true(node.state.processing() >= 3))
            proc.kill()
            proc.wait(timeout=10)
            async with asyncio.timeout(10):
                assert await asyncio.gather(*streams) == ["connection error"] * 3
            # The node's work for the dead lmtui stops with it (its connections closed).
            await until("the node's slots", lambda: _true(node.in_flight() == 0), 10)
            assert _running(server["pid"]), "the pool's server outlives a killed lmtui"
            logged = rows(db)
            assert logged == [("m1", "studio", "ok", 200)] * 6 + [("alpha", "pool", "ok", 200)]
            assert overrides.read_bytes() == saved

            proc = serve(cfg, port, tmp_path)
            await until("the router again", listed)
            state = (await h.get("/lmtui/v1/state")).json()
            assert state["strategy"] == "spread"
            nodes = {n["name"]: n for n in state["snapshot"]["nodes"]}
            assert nodes["spare"]["drained"] and not nodes["studio"]["drained"]

            async def adopted() -> list[dict[str, Any]]:
                procs = (await h.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
                return [p for p in procs if p["state"] == "ready"]

            (again,) = await until("adoption", adopted)
            assert (again["pid"], again["port"], again["adopted"]) == (
                server["pid"],
                server["port"],
                True,
            )

            async def pinned() -> bool:
                s = (await h.get("/lmtui/v1/state")).json()["snapshot"]
                return any(i["model"] == "m1" and i["pinned"] for i in s["instances"])

            await until("the pin in force", pinned, 5)
            # Served again: on the undrained node, and by the adopted server (no second one).
            assert_all_ended(await burst_url(base, 4), ok=True)
            ra = await chat.chat.completions.create(model="alpha", messages=MSG, max_tokens=4)
            assert ra.choices[0].message.content
            procs = (await h.get("/lmtui/v1/nodes/pool/processes")).json()["processes"]
            assert [p["pid"] for p in procs] == [server["pid"]]
            assert len(cluster.node("spare").records) == 0  # drained all along
            metrics = (await h.get("/metrics")).text
            held = [
                line
                for line in metrics.splitlines()
                if line.startswith(("lmtui_in_flight{", "lmtui_queue_depth{"))
                and not line.endswith(" 0.0")
            ]
            assert held == []

            proc.send_signal(signal.SIGTERM)  # a clean stop flushes the log, stops the server
            assert proc.wait(timeout=STEP_S) == 0, (tmp_path / "serve.log").read_text()[-3000:]
            assert not _running(server["pid"])
            after = rows(db)
            assert after[: len(logged)] == logged
            assert len(after) == len(logged) + 5
            assert {r[2] for r in after} == {"ok"}
        finally:
            await h.aclose()
            await chat.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for f in (tmp_path / "pool-state").glob("*.json"):
                pid = int(f.read_text().split('"pid":')[1].split(",")[0])
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)


async def _true(value: bool) -> bool:
    return value


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
