"""The process manager of a pool node: start, watch, signal and read back its servers.

Written once against :class:`~lmtui.backends.procshell.Shell`, so the same code drives
servers on this machine and over SSH. Each call is one short script (one SSH round trip).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterable, Mapping
from time import monotonic

from lmtui.backends.procpool import (
    CatalogueEntry,
    PidFile,
    StartSpec,
    bounded_lines,
    catalogue_script,
    find_script,
    identity,
    log_file_path,
    parse_catalogue,
    parse_pid_files,
    parse_ps,
    pid_file_path,
    pid_files_script,
    ps_script,
    signal_script,
    start_script,
    tail_script,
)
from lmtui.backends.procshell import Shell

#: How often a stopping server is checked for being gone.
GONE_EVERY_S = 0.1
#: How long a SIGKILLed server may take to disappear (the kernel is quick; bound it anyway).
KILL_WAIT_S = 5.0


class ProcessHost:
    """The servers' host: its shell and its state directory (pid and log files)."""

    def __init__(self, shell: Shell, state_dir: str, node: str) -> None:
        self.shell = shell
        self.state_dir = state_dir
        self.node = node

    async def start(self, spec: StartSpec, key: str | None) -> int:
        """Start one server detached; its pid. The key goes on stdin, never on a command line."""
        out = await self.shell.run(
            start_script(spec, with_key=key is not None),
            input=key + "\n" if key is not None else None,
        )
        return int(out.strip().splitlines()[-1])

    async def running(self, pids: Iterable[int]) -> dict[int, str]:
        """``{pid: command line}`` of those of ``pids`` still alive (one round trip; with no
        pids it still proves the host answers)."""
        return parse_ps(await self.shell.run(ps_script(pids)))

    async def alive(self, pid: int | None, path: str, port: int) -> bool:
        """Whether ``pid`` still runs the server of ``path`` on ``port`` (not a stranger)."""
        if pid is None:
            return False
        cmd = (await self.running([pid])).get(pid)
        return cmd is not None and identity(path, port) in cmd

    async def find(self, path: str, port: int) -> int | None:
        """The pid running that server, looked up by command line (its start's answer was
        lost, e.g. with a dropped SSH connection)."""
        ident = identity(path, port)
        found = parse_ps(await self.shell.run(find_script(ident)))
        return next((p for p, cmd in found.items() if ident in cmd), None)

    async def stop(self, pid: int, path: str, port: int, grace: float) -> bool:
        """SIGTERM, then SIGKILL after ``grace`` s; True when SIGTERM was enough."""
        ident = identity(path, port)
        await self.shell.run(signal_script(pid, ident, "TERM"))
        if await self._gone(pid, path, port, grace):
            return True
        await self.shell.run(signal_script(pid, ident, "KILL"))
        await self._gone(pid, path, port, KILL_WAIT_S)
        return False

    async def _gone(self, pid: int, path: str, port: int, within: float) -> bool:
        end = monotonic() + within
        while await self.alive(pid, path, port):
            if monotonic() >= end:
                return False
            await asyncio.sleep(GONE_EVERY_S)
        return True

    async def tail(self, stem: str) -> tuple[str, ...]:
        """The last lines of a server's log (bounded)."""
        return bounded_lines(await self.shell.run(tail_script(log_file_path(self.state_dir, stem))))

    async def forget(self, stem: str) -> None:
        """Delete a server's pid file (its log stays, for a post-mortem)."""
        await self.shell.run(f"rm -f {pid_file_path(self.state_dir, stem)}")

    async def remove(self, file: str) -> None:
        await self.shell.run(f"rm -f {shlex.quote(file)}")

    async def pid_files(self) -> list[tuple[str, PidFile | None]]:
        """This node's pid files on the host: (file, content or None when unreadable)."""
        return parse_pid_files(await self.shell.run(pid_files_script(self.state_dir, self.node)))

    async def catalogue(
        self, models_dir: str | None, models: Mapping[str, str]
    ) -> tuple[dict[str, CatalogueEntry], list[str]]:
        """The models the host can serve, and the table's files that are missing."""
        return parse_catalogue(await self.shell.run(catalogue_script(models_dir, models)))

    async def close(self) -> None:
        await self.shell.close()
