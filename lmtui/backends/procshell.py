"""Where a pool node's scripts run: this machine or the node's SSH connection.

One tiny interface, ``run(script) -> stdout``, so the process manager
(:mod:`lmtui.backends.pool_process`) has one code path for local and remote hosts. A
non-zero exit is :class:`BackendBadResponse`; no answer in time is :class:`BackendUnreachable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
from typing import Protocol

from lmtui.backends.base import BackendBadResponse, BackendUnreachable
from lmtui.backends.ssh import SshHost

#: Most bytes of one script's output read into memory.
MAX_OUTPUT = 256 * 1024


class Shell(Protocol):
    """Runs one ``sh`` script on a host and returns its stdout (non-zero exit raises)."""

    #: Where the scripts run, for messages ("local", "user@host:22").
    where: str

    async def run(self, script: str, *, input: str | None = None) -> str: ...

    async def close(self) -> None: ...


class LocalShell:
    """``/bin/sh -c SCRIPT`` on this machine, bounded by ``timeout`` seconds.

    Run with :mod:`subprocess` in a worker thread rather than asyncio's subprocess API: under
    uvloop (which ``lmtui --serve`` uses) a child inherits the loop's own descriptors
    (measured: its sockets and a pipe), so a server started from the script would hold the
    script's pipe open (the call never returns) and lmtui's listening socket after a crash.
    ``subprocess`` closes every other descriptor (``close_fds``).
    """

    where = "local"

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    async def run(self, script: str, *, input: str | None = None) -> str:
        result = await asyncio.to_thread(_run_sync, script, input, self.timeout)
        if result is None:
            msg = f"local: `{_short(script)}` took over {self.timeout:g} s"
            raise BackendUnreachable(msg)
        code, out, err = result
        if code != 0:
            raise BackendBadResponse(
                f"local: `{_short(script)}` failed ({code}): "
                f"{err[:200].decode(errors='replace').strip()}"
            )
        return out[:MAX_OUTPUT].decode(errors="replace")

    async def close(self) -> None:
        """Nothing to release."""


def _run_sync(script: str, input: str | None, timeout: float) -> tuple[int, bytes, bytes] | None:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script],
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        # Its own session: a Ctrl-C meant for lmtui's terminal never reaches a server
        # started from here; lmtui stops its servers itself.
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input.encode() if input is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        # The whole group: a child still holding the pipes would keep communicate() waiting.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=1.0)
        return None
    return proc.returncode, out, err


class SshShell:
    """The same scripts over a node's persistent SSH connection (run through ``sh``, since
    the login shell may be fish or csh)."""

    def __init__(self, host: SshHost) -> None:
        self.host = host
        self.where = host.target

    async def run(self, script: str, *, input: str | None = None) -> str:
        out = await self.host.run("sh -c " + shlex.quote(script), input=input)
        return out[:MAX_OUTPUT]

    async def close(self) -> None:
        await self.host.close()


def _short(script: str) -> str:
    flat = " ".join(script.split())
    return flat if len(flat) <= 60 else flat[:57] + "..."
