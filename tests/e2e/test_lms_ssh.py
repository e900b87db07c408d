"""LM Studio controlled through ``lms`` over a real OpenSSH server on loopback.

The ``lms`` here is the simulator's stand-in (lmtui/sim/lms.py: LM Studio cannot run on
this machine), driving a simulated LM Studio 0.3 server, which has no REST load: through
``lms`` lmtui reads busy truth, sizes and TTLs and loads and unloads there anyway."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from sshd import Sshd

from lmtui.config import Config, NodeConfig, PollConfig, PoolConfig, SshConfig
from lmtui.core.model import GiB, NodeKind
from lmtui.engine import commands as cmd
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

pytestmark = pytest.mark.slow

STEP_S = 30.0


def wrapper(tmp_path: Path, server: str) -> Path:
    """The node's ``lms``: a one-line script, as the stand-in's docstring shows."""
    path = tmp_path / "lms"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m lmtui.sim.lms --server {server} "$@"\n')
    path.chmod(0o755)
    return path


async def eventually(check, timeout: float = STEP_S) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_a_0_3_server_loads_unloads_and_reports_busy_through_lms(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every poll runs lms ps here (a real host reuses it for LMS_PS_EVERY_S): the busy
    # truth below is read right after the request starts.
    monkeypatch.setattr("lmtui.backends.lmstudio.LMS_PS_EVERY_S", 0.0)
    spec = SimNodeSpec(
        name="old",
        kind=NodeKind.LMSTUDIO,
        version="0.3.9",
        memory_gb=64,
        models=[SimModel("m1", 4.0), SimModel("m2", 6.0)],
        loaded=["m1"],
        # A reply of 64 tokens or more lasts 6 s or more of wall time, longer than the
        # lms stand-in's start on a loaded machine (at 40 tokens/s a short reply was over
        # in 0.3 s, before lms ps read it).
        decode_tok_per_s=2.0,
    )
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    async with SimCluster([spec], time_scale=0.2) as cluster:
        url = cluster.url("old")
        ssh = SshConfig(
            host="127.0.0.1",
            port=sshd.port,
            user=sshd.user,
            key_file=str(sshd.client_key),
            known_hosts=str(known),
            timeout=10.0,
            lms=str(wrapper(tmp_path, url)),
        )
        node = NodeConfig(name="old", kind=NodeKind.LMSTUDIO, url=url, memory_gb=64, ssh=ssh)
        cfg = Config(
            nodes=[node],
            poll=PollConfig(interval=0.3, timeout=10.0),
            pool=PoolConfig(reserved_gb=0),
        )
        async with Engine(cfg) as engine:
            await engine.poller.poll_once("old")
            snap = engine.store.snapshot
            (inst,) = snap.instances_on("old")
            # REST v0 has no sizes; lms ps does.
            assert inst.model == "m1" and inst.size_bytes == int(4.0 * GiB)
            assert snap.nodes["old"].no_load is None  # loadable, through lms
            # A load the REST API of 0.3 cannot do.
            async with asyncio.timeout(STEP_S):
                await engine.controller.execute(cmd.Load(model="m2", node="old"))
            # The command starts the load; lms load returns once the model is in memory.
            await eventually(lambda: sorted(cluster.node("old").loaded_models()) == ["m1", "m2"])
            await engine.poller.poll_once("old")
            ids = {i.instance_id for i in engine.store.snapshot.instances_on("old")}
            assert ids == {"m1", "m2"}
            # Busy truth from a client that bypasses lmtui: lms ps says "generating".
            async with httpx.AsyncClient(timeout=STEP_S) as h:
                body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
                task = asyncio.create_task(
                    h.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 400})
                )
                await eventually(lambda: cluster.node("old").in_flight() > 0)
                await engine.poller.poll_once("old")
                busy = {i.model: i for i in engine.store.snapshot.instances_on("old")}
                assert busy["m1"].slots_busy == 1 and busy["m2"].slots_busy in (0, None)
                task.cancel()
            async with asyncio.timeout(STEP_S):
                await engine.controller.execute(
                    cmd.Unload(node="old", instance_id="m2", force=True)
                )
            await eventually(lambda: cluster.node("old").loaded_models() == ["m1"])


async def test_without_lms_on_the_host_the_http_view_stays_and_no_load_is_offered(
    sshd: Sshd, tmp_path: Path
) -> None:
    """An SSH section kept for host memory alone, on a host without lms: the poll keeps
    the HTTP API's view, and a 0.3 server stays not loadable."""
    spec = SimNodeSpec(
        name="old", kind=NodeKind.LMSTUDIO, version="0.3.9", memory_gb=64,
        models=[SimModel("m1", 4.0)], loaded=["m1"],
    )  # fmt: skip
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    async with SimCluster([spec], time_scale=0.2) as cluster:
        ssh = SshConfig(
            host="127.0.0.1",
            port=sshd.port,
            user=sshd.user,
            key_file=str(sshd.client_key),
            known_hosts=str(known),
            lms=str(tmp_path / "no-such-lms"),
        )
        node = NodeConfig(
            name="old", kind=NodeKind.LMSTUDIO, url=cluster.url("old"), memory_gb=64, ssh=ssh
        )
        cfg = Config(nodes=[node], pool=PoolConfig(reserved_gb=0))
        async with Engine(cfg) as engine:
            await engine.poller.poll_once("old")
            snap = engine.store.snapshot
            assert [i.model for i in snap.instances_on("old")] == ["m1"]
            assert snap.nodes["old"].no_load is not None
            backend = engine.backends["old"]
            assert backend.lms_error is not None  # type: ignore[attr-defined]
