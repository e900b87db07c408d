"""The poll loops: one task per node for its API, one per host for its memory.

Polls of one node never overlap (a slow node cannot pile up requests against itself): its
loop awaits each poll before it sleeps, and ``poll_once`` — also called by the dispatcher
after a load and by the controller after an unload — waits for a running poll and then
polls again, one poll shared by every caller that waited. The delay after a failure comes from
``core.health.next_poll_delay``: every interval while healthy or suspect, then a doubling
half-open probe while down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol
from urllib.parse import urlsplit

from lmtui.backends.base import Backend, BackendError
from lmtui.core.health import HealthPolicy, next_poll_delay
from lmtui.core.model import HostMemory, MemoryObservation, PollFailure
from lmtui.engine.store import Store

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class MemoryReader(Protocol):
    """Something that reads one host's memory: an ``SshHost``, or the local psutil reader."""

    async def read_memory(self) -> HostMemory: ...

    async def close(self) -> None: ...


class LocalMemory:
    async def read_memory(self) -> HostMemory:
        from lmtui.backends.hostmem import local_host_memory

        return local_host_memory()

    async def close(self) -> None:
        """Nothing to release."""


def is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOOPBACK_HOSTS


class Poller:
    def __init__(
        self,
        store: Store,
        backends: dict[str, Backend],
        *,
        interval_s: float | dict[str, float] = 1.0,
        policy: HealthPolicy | None = None,
        memory_readers: dict[str, MemoryReader] | None = None,
        memory_interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.backends = backends
        self.interval = interval_s
        self.policy = policy or HealthPolicy()
        self.memory_readers = memory_readers or {}
        self.memory_interval_s = memory_interval_s
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        #: Per node: held while a poll runs.
        self._locks: dict[str, asyncio.Lock] = {}
        #: Per node: the poll that starts once the running one ends, shared by its waiters.
        self._next: dict[str, asyncio.Task[None]] = {}

    def interval_for(self, node: str) -> float:
        if isinstance(self.interval, dict):
            return self.interval.get(node, 1.0)
        return self.interval

    async def start(self) -> None:
        for name, backend in self.backends.items():
            self._tasks.append(
                asyncio.create_task(self._poll_loop(name, backend), name=f"poll:{name}")
            )
        for name, reader in self.memory_readers.items():
            self._tasks.append(
                asyncio.create_task(self._memory_loop(name, reader), name=f"memory:{name}")
            )

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._next.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._next.clear()
        for reader in self.memory_readers.values():
            try:
                await reader.close()
            except Exception:
                log.debug("closing memory reader failed", exc_info=True)

    async def poll_once(self, name: str) -> None:
        """Poll one node and apply what it answered, after any poll of it already running
        (which may have read the node before the caller's change). Callers that arrive
        while one poll runs share the next one."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        if not lock.locked():
            async with lock:
                await self._poll(name)
            return
        task = self._next.get(name)
        if task is None:
            task = self._next[name] = asyncio.get_running_loop().create_task(
                self._poll_after(name, lock), name=f"refresh:{name}"
            )
        # A caller that gives up does not cancel the poll the others wait for.
        await asyncio.shield(task)

    async def _poll_after(self, name: str, lock: asyncio.Lock) -> None:
        async with lock:
            # From here on, a new caller waits for the poll after this one.
            self._next.pop(name, None)
            await self._poll(name)

    async def _poll(self, name: str) -> None:
        backend = self.backends[name]
        t0 = time.perf_counter()
        try:
            obs = await backend.poll(self.clock())
        except BackendError as e:
            self.store.apply(PollFailure(name, self.clock(), time.perf_counter() - t0, str(e)))
            return
        except Exception as e:  # a bug in an adapter must show as a failing node, not kill polling
            log.exception("poll of %s failed unexpectedly", name)
            self.store.apply(
                PollFailure(
                    name,
                    self.clock(),
                    time.perf_counter() - t0,
                    f"internal error: {type(e).__name__}: {e}",
                )
            )
            return
        why = backend.no_load_reason
        if why is not None:  # what a load here would meet, for the dashboard to say
            obs = replace(obs, no_load=why[:200])
        self.store.apply(obs)

    async def _poll_loop(self, name: str, backend: Backend) -> None:
        interval = self.interval_for(name)
        while True:
            t0 = time.perf_counter()
            await self.poll_once(name)
            failures = self.store.snapshot.nodes[name].consecutive_failures
            delay = next_poll_delay(interval, failures, self.policy)
            # Keep a steady cadence: a poll that took 200 ms of a 1 s interval sleeps 800 ms.
            await asyncio.sleep(max(0.05 * interval, delay - (time.perf_counter() - t0)))

    async def _memory_loop(self, name: str, reader: MemoryReader) -> None:
        while True:
            try:
                mem = await reader.read_memory()
                self.store.apply(MemoryObservation(name, self.clock(), mem))
            except BackendError as e:
                self.store.apply(MemoryObservation(name, self.clock(), None, error=str(e)))
            except Exception as e:
                log.exception("memory read of %s failed unexpectedly", name)
                self.store.apply(
                    MemoryObservation(name, self.clock(), None, error=f"internal error: {e}")
                )
            await asyncio.sleep(self.memory_interval_s)
