"""A fixed number of slots with a FIFO wait line, like a server's parallel sequences."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotPool(Generic[T]):
    """``size`` slots; ``acquire`` waits in arrival order when all are busy.

    Each busy slot remembers what occupies it (a job), so ``/slots`` can show per-slot
    state the way llama.cpp does. A freed slot is handed straight to the first waiter, so
    a newcomer can never overtake the line.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.busy: list[T | None] = [None] * self.size
        self._waiters: deque[tuple[asyncio.Future[int], T]] = deque()

    @property
    def in_use(self) -> int:
        return sum(1 for j in self.busy if j is not None)

    @property
    def waiting(self) -> int:
        return sum(1 for f, _ in self._waiters if not f.done())

    def _free_index(self) -> int | None:
        for i, j in enumerate(self.busy):
            if j is None:
                return i
        return None

    async def acquire(self, job: T) -> int:
        """Take a slot for ``job``; returns its index. Cancel-safe."""
        idx = self._free_index()
        if idx is not None and not self._waiters:
            self.busy[idx] = job
            return idx
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, job))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release(fut.result())
            else:
                self._waiters = deque(w for w in self._waiters if w[0] is not fut)
            raise

    def release(self, idx: int) -> None:
        """Free slot ``idx``, handing it to the first live waiter."""
        self.busy[idx] = None
        while self._waiters:
            fut, job = self._waiters.popleft()
            if not fut.done():
                self.busy[idx] = job
                fut.set_result(idx)
                return
