"""SshHost against a real OpenSSH sshd on loopback: memory, host keys, reuse, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
from sshd import Sshd, free_port, keygen

from lmtui.backends import ssh as ssh_mod
from lmtui.backends.base import BackendBadResponse, BackendUnreachable
from lmtui.backends.ssh import HostKeyRejected, SshAuthFailed, SshHost
from lmtui.config import SshConfig

pytestmark = pytest.mark.slow

#: Generous bound for any single test step; nothing here should come close.
STEP_S = 20.0

MakeHost = Callable[..., SshHost]


def _config(sshd: Sshd, known_hosts: Path, **overrides: Any) -> SshConfig:
    base = SshConfig(
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_file=str(sshd.client_key),
        known_hosts=str(known_hosts),
        timeout=5.0,
    )
    return msgspec.structs.replace(base, **overrides)


def _text(path: Path) -> str:
    """Read a tiny test file. Synchronous on purpose: microseconds, and only in tests."""
    return path.read_text()


@pytest.fixture
def known_hosts(tmp_path: Path, sshd: Sshd) -> Path:
    """A known_hosts file that trusts the sshd's current host key."""
    path = tmp_path / "known_hosts"
    path.write_text(sshd.known_hosts_line())
    return path


@pytest.fixture
async def make_host(sshd: Sshd) -> AsyncIterator[MakeHost]:
    """Build SshHosts for the test sshd; all are closed at teardown."""
    hosts: list[SshHost] = []

    def make(known_hosts: Path, **overrides: Any) -> SshHost:
        host = SshHost(
            _config(sshd, known_hosts, **overrides), default_host="unused.invalid", node_name="box"
        )
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        await host.close()


async def test_reads_linux_host_memory(sshd: Sshd, known_hosts: Path, make_host: MakeHost) -> None:
    host = make_host(known_hosts)
    before = sshd.logins()
    async with asyncio.timeout(STEP_S):
        first = await host.read_memory()
        second = await host.read_memory()
    # sshd runs on this very machine, so the remote MemTotal is ours (psutil reads it too).
    local_total = psutil.virtual_memory().total
    for mem in (first, second):
        assert mem.source == "ssh-linux"
        assert mem.total_bytes == local_total
        assert 0 < mem.available_bytes <= mem.total_bytes
    assert sshd.logins() == before + 1  # OS detection and both reads on one connection


async def test_unknown_host_key_is_refused(sshd: Sshd, tmp_path: Path, make_host: MakeHost) -> None:
    kh = tmp_path / "known_hosts"
    # An entry for the same address on ANOTHER port is a different host: still unknown.
    alg, blob = sshd.client_public_key()
    kh.write_text(f"[127.0.0.1]:{free_port()} {alg} {blob}\n")
    before_text, before_logins = _text(kh), sshd.logins()
    host = make_host(kh)
    async with asyncio.timeout(STEP_S):
        with pytest.raises(HostKeyRejected) as info:
            await host.run("echo hi")
    err = info.value
    assert not err.changed
    assert err.fingerprint == sshd.host_fingerprint()
    msg = str(err)
    for expected in (sshd.host_fingerprint(), str(kh), "ssh-keyscan", "accept_new_host_key"):
        assert expected in msg
    assert _text(kh) == before_text
    assert sshd.logins() == before_logins  # refused before authenticating


async def test_new_host_key_is_accepted_and_written(
    sshd: Sshd, tmp_path: Path, make_host: MakeHost
) -> None:
    kh = tmp_path / "fresh" / "known_hosts"  # neither the file nor its directory exist
    async with asyncio.timeout(STEP_S):
        assert await make_host(kh, accept_new_host_key=True).run("echo hi") == "hi\n"
    assert _text(kh) == sshd.known_hosts_line()
    # The written line is a valid entry: a strict client now trusts the host.
    async with asyncio.timeout(STEP_S):
        assert await make_host(kh).run("echo again") == "again\n"
    assert _text(kh) == sshd.known_hosts_line()  # nothing appended twice


async def test_accepting_a_key_keeps_a_last_line_without_newline(
    sshd: Sshd, tmp_path: Path, make_host: MakeHost
) -> None:
    kh = tmp_path / "known_hosts"
    alg, blob = sshd.client_public_key()
    kh.write_text(f"otherhost {alg} {blob}")  # hand-edited file, no final newline
    async with asyncio.timeout(STEP_S):
        await make_host(kh, accept_new_host_key=True).run("true")
    assert _text(kh).splitlines() == [
        f"otherhost {alg} {blob}",
        sshd.known_hosts_line().strip(),
    ]


async def test_changed_host_key_is_refused_even_with_accept_new(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    before = _text(known_hosts)
    await asyncio.to_thread(sshd.restart, new_host_key=True)  # the "reinstalled" host
    host = make_host(known_hosts, accept_new_host_key=True)
    async with asyncio.timeout(STEP_S):
        with pytest.raises(HostKeyRejected) as info:
            await host.run("echo hi")
    err = info.value
    assert err.changed
    assert err.fingerprint == sshd.host_fingerprint()
    assert "CHANGED" in str(err)
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in str(err)
    assert _text(known_hosts) == before  # the new key was NOT remembered


async def test_one_connection_serves_many_commands(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    host = make_host(known_hosts)
    before = sshd.logins()
    async with asyncio.timeout(STEP_S):
        # Concurrent first calls must share one connect, not race to open several.
        seen = await asyncio.gather(*(host.run("echo $SSH_CONNECTION") for _ in range(4)))
        seen.append(await host.run("echo $SSH_CONNECTION"))
    # SSH_CONNECTION holds the client's source port: one value means one TCP connection.
    assert len(set(seen)) == 1 and seen[0].startswith("127.0.0.1 ")
    assert sshd.logins() == before + 1
    assert host.connections_made == 1


async def test_reconnects_after_sshd_restart(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    host = make_host(known_hosts)
    async with asyncio.timeout(STEP_S):
        first = await host.run("echo $SSH_CONNECTION")
        await asyncio.to_thread(sshd.restart)  # drops every session, like a reboot
        second = await host.run("echo $SSH_CONNECTION")
        mem = await host.read_memory()  # OS detection is redone on the new connection
    assert first != second
    assert host.connections_made == 2
    assert mem.source == "ssh-linux"


async def test_reconnects_when_only_the_command_finds_the_connection_dead(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    host = make_host(known_hosts)
    async with asyncio.timeout(STEP_S):
        first = await host.run("echo $SSH_CONNECTION")
        # Deliberately blocking: the event loop must not run between the restart and the
        # command, so the client has not yet seen the EOF and the command itself hits the
        # dead connection (the "host rebooted between two polls" case).
        sshd.restart()
        assert host.connected  # the client has not noticed yet
        second = await host.run("echo $SSH_CONNECTION")
    assert first != second
    assert host.connections_made == 2


async def test_down_host_fails_then_recovers(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    host = make_host(known_hosts)
    await asyncio.to_thread(sshd.stop)
    async with asyncio.timeout(STEP_S):
        with pytest.raises(BackendUnreachable, match="box: "):
            await host.run("true")
        await asyncio.to_thread(sshd.start)
        # The first backoff is short; keep polling like the poll loop would, boundedly.
        while True:
            try:
                assert await host.run("echo back") == "back\n"
                break
            except BackendUnreachable:
                await asyncio.sleep(0.2)


async def test_backoff_fails_fast_without_connecting(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_mod, "BACKOFF_START", 60.0)
    host = make_host(known_hosts)
    await asyncio.to_thread(sshd.stop)
    async with asyncio.timeout(STEP_S):
        with pytest.raises(BackendUnreachable) as first:
            await host.run("true")
        await asyncio.to_thread(sshd.start)
        logins = sshd.logins()
        # The host is back, but the backoff is not over: fail at once, with the last reason.
        with pytest.raises(BackendUnreachable) as again:
            await host.run("true")
    assert str(again.value) == str(first.value)
    assert sshd.logins() == logins


async def test_command_timeout_then_recovery(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    host = make_host(known_hosts, timeout=1.0)
    async with asyncio.timeout(STEP_S):
        with pytest.raises(BackendUnreachable, match="no answer within 1 s"):
            await host.run("sleep 30")
        assert await host.run("echo alive") == "alive\n"


async def test_failing_command_is_bad_response_and_keeps_connection(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost
) -> None:
    host = make_host(known_hosts)
    async with asyncio.timeout(STEP_S):
        with pytest.raises(BackendBadResponse, match=r"failed \(3\): oops"):
            await host.run("echo oops >&2; exit 3")
        assert await host.run("echo fine") == "fine\n"
    assert host.connections_made == 1


@pytest.fixture
def stranger_key(tmp_path: Path) -> Path:
    return keygen(tmp_path / "id_stranger")


async def test_unauthorized_key_is_auth_failure(
    sshd: Sshd, known_hosts: Path, make_host: MakeHost, stranger_key: Path
) -> None:
    host = make_host(known_hosts, key_file=str(stranger_key))
    async with asyncio.timeout(STEP_S):
        with pytest.raises(SshAuthFailed, match="login refused"):
            await host.run("true")
