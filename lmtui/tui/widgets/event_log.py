"""The event log: the newest engine events, oldest at the top, long ones wrapped.

Routing decisions (one per request) are debug-level and hidden by default, so loads,
evictions, health changes, circuit breakers and failures stay in sight; ``v`` shows them
too (``show_debug``). The log keeps the last ``MAX_LINES`` events whatever is shown, so
switching the level rewrites it from that, and so does a resize: a wrapped line is wrapped
at the width it was written at, and a new width wraps it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from rich.table import Table
from textual import events
from textual.widgets import RichLog

from lmtui.core.events import Event
from lmtui.tui.render import event_line, fmt_clock, is_debug

#: Events kept; older ones scroll away. The store keeps its own longer history.
MAX_LINES = 500


def wrapped_line(event: Event) -> Table:
    """The event with its message wrapped under itself, not under the time."""
    line = event_line(event)
    stamp = len(fmt_clock(event.at)) + 1
    grid = Table.grid(expand=True)
    grid.add_column(width=stamp, no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_row(line[:stamp], line[stamp:])
    return grid


class EventLog(RichLog):
    """Append-only log of node health changes, loads, unloads and engine decisions."""

    def __init__(self, *, id: str | None = "events") -> None:
        super().__init__(id=id, max_lines=MAX_LINES, wrap=True, markup=False, highlight=False)
        #: How many events arrived (shown or not), for tests.
        self.count = 0
        #: Whether routing decisions (debug level) are shown.
        self.show_debug = False
        self._events: deque[Event] = deque(maxlen=MAX_LINES)
        self._last: Event | None = None
        self._width = 0
        self.border_title = "Events"

    @property
    def shown(self) -> list[Event]:
        """The events on the log now, oldest first."""
        return [e for e in self._events if self._visible(e)]

    def _visible(self, event: Event) -> bool:
        return self.show_debug or not is_debug(event)

    def add_events(self, events: Iterable[Event], *, skip_seen: bool = False) -> None:
        """Append events in the order given (oldest first).

        With ``skip_seen``, events not newer than the last one written are dropped: a
        backlog fetched again after a reconnect repeats what the log already shows.
        """
        for event in events:
            last = self._last
            if skip_seen and last is not None and (event.at < last.at or event == last):
                continue
            self._events.append(event)
            if self._visible(event):
                self.write(wrapped_line(event), expand=True)
            self._last = event
            self.count += 1

    def set_debug(self, on: bool) -> None:
        """Show routing decisions too (``on``), or only info and above."""
        if on != self.show_debug:
            self.show_debug = on
            self.border_title = "Events (all, debug included)" if on else "Events"
            self._rewrite()

    def _rewrite(self) -> None:
        self.clear()
        for event in self.shown:
            self.write(wrapped_line(event), expand=True)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            first = self._width == 0
            self._width = event.size.width
            if not first:
                self._rewrite()
