"""The header: cluster totals and what the dashboard drives (strategy, embedded or attached,
source), and the demo banner when there is no config.

Totals and context share one line when it is wide enough; at 80 columns they do not (the
totals alone are about 75 cells), and the context gets a line of its own rather than being
cut off, since the strategy is what a user looks for there.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from lmtui.core.model import Snapshot
from lmtui.tui.render import (
    DEMO_BANNER,
    HEADER_BAR,
    cells_equal,
    header_context,
    header_totals,
)


class ClusterHeader(Vertical):
    """Totals across the cluster plus the strategy, the mode and the source."""

    DEFAULT_CSS = """
    ClusterHeader { height: auto; background: $panel; padding: 0 1; }
    ClusterHeader #totals { height: 1; }
    ClusterHeader #context { height: 1; }
    ClusterHeader #demo-banner { height: 1; color: $warning; text-style: bold; }
    """

    def __init__(self, source: str, *, read_only: bool = False, mode: str = "embedded") -> None:
        super().__init__(id="header")
        self.source = source
        self.read_only = read_only
        self.mode = mode
        self._strategy: str | None = None
        self._totals: Text | None = None
        self._narrow_totals: Text | None = None
        self._lines: tuple[Text, Text | None] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        yield Static(id="context")
        if self.source == "demo":
            # A new user who ran lmtui without a config must see at once that these nodes
            # are simulated, and where to go next.
            yield Static(DEMO_BANNER, id="demo-banner")

    def show(self, snapshot: Snapshot) -> None:
        """Redraw the totals for ``snapshot`` (only when their text changed)."""
        self._totals = header_totals(snapshot)
        self._narrow_totals = header_totals(snapshot, gap=" ")
        self._redraw()

    def show_strategy(self, name: str | None) -> None:
        """The routing strategy in force, once the engine said it (or after it changed)."""
        self._strategy = name or None
        self._redraw()

    def on_resize(self, event: events.Resize) -> None:
        self._redraw()

    def _context_line(self) -> Text:
        return header_context(
            self.source, read_only=self.read_only, strategy=self._strategy, mode=self.mode
        )

    def _redraw(self) -> None:
        if self._totals is None or self._narrow_totals is None or not self.is_mounted:
            return
        context = self._context_line()
        width = self.content_size.width
        one_line = self._totals.copy()
        one_line.append(HEADER_BAR, style="dim")
        one_line.append_text(context)
        lines: tuple[Text, Text | None] = (
            (one_line, None)
            if width <= 0 or one_line.cell_len <= width
            else (self._narrow_totals, context)
        )
        if self._lines is not None and _same(lines, self._lines):
            return
        self._lines = lines
        self.query_one("#totals", Static).update(lines[0])
        second = self.query_one("#context", Static)
        second.display = lines[1] is not None
        second.update(lines[1] or "")

    @property
    def totals_text(self) -> str:
        """Totals and context as one line of plain text (for tests and screen readers)."""
        if self._totals is None:
            return ""
        return self._totals.plain + HEADER_BAR + self._context_line().plain

    @property
    def line_count(self) -> int:
        """How many lines totals and context take now (1, or 2 on a narrow terminal)."""
        return 1 if self._lines is None or self._lines[1] is None else 2


def _same(a: tuple[Text, Text | None], b: tuple[Text, Text | None]) -> bool:
    if (a[1] is None) != (b[1] is None):
        return False
    return cells_equal(a[0], b[0]) and (a[1] is None or b[1] is None or cells_equal(a[1], b[1]))
