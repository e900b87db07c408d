"""The SSH connection to a node's host drops and comes back (a real OpenSSH sshd, stopped
with its sessions as a rebooted host drops them, then started again on the same port).

The node's host memory is read over that connection. While it is gone the node's memory is
stale and says why, but the node itself stays healthy and every request through the router
is served, loads included; once sshd is back lmtui reconnects by itself and the memory is
fresh again. Nothing leaks (``routed``'s exit checks).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _faults import assert_all_ended, burst, lms, routed
from sshd import Sshd

from lmtui.backends import ssh as ssh_mod
from lmtui.config import PollConfig, SshConfig
from lmtui.core.model import Health

pytestmark = pytest.mark.slow


async def test_ssh_connection_dropped_and_back(
    sshd: Sshd, known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_mod, "BACKOFF_START", 0.2)
    monkeypatch.setattr(ssh_mod, "BACKOFF_MAX", 0.5)
    ssh = SshConfig(
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_file=str(sshd.client_key),
        known_hosts=str(known_hosts),
        timeout=5.0,
    )
    overrides = {"a": {"memory_gb": None, "ssh": ssh}}
    poll = PollConfig(interval=0.2, timeout=1.0, memory_interval=0.2)
    async with routed(
        [lms("a", ["m1"]), lms("b", ["m1"])], poll=poll, node_overrides=overrides
    ) as (cluster, engine):
        node = lambda: engine.store.snapshot.nodes["a"]  # noqa: E731
        async with asyncio.timeout(20):
            while node().memory is None:
                await asyncio.sleep(0.05)
        assert node().memory is not None and node().memory.source == "ssh-linux"
        logins = sshd.logins()
        assert_all_ended(await burst(engine, 8), ok=True)

        sshd.stop()  # the host's sshd and every session it had: the connection drops
        async with asyncio.timeout(20):
            while node().memory_error is None:
                await asyncio.sleep(0.05)
        # The node's API still answers: healthy, its last memory kept, requests served,
        # and a load placed with that memory works.
        assert node().health is Health.HEALTHY and node().memory is not None
        assert_all_ended(await burst(engine, 8), ok=True)
        assert_all_ended(await burst(engine, 4, model="m2"), ok=True)

        sshd.start()  # back on the same port
        async with asyncio.timeout(20):
            while node().memory_error is not None:
                await asyncio.sleep(0.05)
        assert sshd.logins() > logins  # a new connection, made by lmtui on its own
        assert_all_ended(await burst(engine, 8), ok=True)
        del cluster
