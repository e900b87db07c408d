"""The event log: the newest engine events, one line each, oldest at the top."""

from __future__ import annotations

from collections.abc import Iterable

from textual.widgets import RichLog

from lmtui.core.events import Event
from lmtui.tui.render import event_line

#: Lines kept; older ones scroll away. The store keeps its own longer history.
MAX_LINES = 500


class EventLog(RichLog):
    """Append-only log of node health changes, loads, unloads and engine decisions."""

    def __init__(self, *, id: str | None = "events") -> None:
        super().__init__(id=id, max_lines=MAX_LINES, wrap=False, markup=False, highlight=False)
        #: How many events were written, for tests (RichLog's lines include wrapped parts).
        self.count = 0
        self._last: Event | None = None
        self.border_title = "Events"

    def add_events(self, events: Iterable[Event], *, skip_seen: bool = False) -> None:
        """Append events in the order given (oldest first).

        With ``skip_seen``, events not newer than the last one written are dropped: a
        backlog fetched again after a reconnect repeats what the log already shows.
        """
        for event in events:
            last = self._last
            if skip_seen and last is not None and (event.at < last.at or event == last):
                continue
            self.write(event_line(event))
            self._last = event
            self.count += 1
