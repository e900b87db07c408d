"""EngineClient: the one interface the UI uses to see and command the engine.

Two implementations share it: ``InProcessClient`` (the UI and the engine in one process) and,
with the control API, an HTTP client for ``lmtui --connect``. The UI never touches the store.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lmtui.core.events import Event
from lmtui.core.model import Snapshot
from lmtui.engine.engine import Engine


@dataclass(frozen=True, slots=True)
class Update:
    """A snapshot and the events recorded since the previous update to this watcher."""

    snapshot: Snapshot
    events: list[Event] = field(default_factory=list)


class EngineClient(abc.ABC):
    #: Where the cluster description came from ("demo", a config path, a URL).
    source: str = ""
    read_only: bool = False

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The latest snapshot known to this client."""

    @abc.abstractmethod
    def recent_events(self, limit: int = 200) -> list[Event]:
        """The newest events, oldest first."""

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[Update]:
        """Yield an update whenever the cluster changes (bursts coalesce)."""


class InProcessClient(EngineClient):
    def __init__(self, engine: Engine, *, read_only: bool = False) -> None:
        self.engine = engine
        self.source = engine.source
        self.read_only = read_only

    def snapshot(self) -> Snapshot:
        return self.engine.store.snapshot

    def recent_events(self, limit: int = 200) -> list[Event]:
        events = self.engine.store.events
        return list(events)[-limit:]

    async def watch(self) -> AsyncIterator[Update]:
        pending: list[Event] = []
        unsubscribe = self.engine.store.subscribe(lambda _s, ev: pending.extend(ev))
        try:
            async for snap in self.engine.store.watch():
                events, pending[:] = list(pending), []
                yield Update(snap, events)
        finally:
            unsubscribe()
