"""The header: cluster totals, what the dashboard drives (strategy, embedded or attached,
source), the cluster's trend over the last minutes, and the demo banner when there is no
config.

Totals and context share one line when it is wide enough; at 80 columns they do not (the
totals alone are about 75 cells), and the context gets a line of its own rather than being
cut off, since the strategy is what a user looks for there. The trend (sparklines of
requests/s, queue depth and tokens/s) goes at the end of the last line when it fits there,
else on a line of its own, unless the terminal is too short to spare one (under
``TREND_MIN_HEIGHT`` rows: at 80×24 every row goes to the tables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from lmtui.core.model import Instance, Snapshot
from lmtui.engine.history import History
from lmtui.tui.render import (
    DEMO_BANNER,
    HEADER_BAR,
    cells_equal,
    header_context,
    header_totals_texts,
)
from lmtui.tui.trend import header_trend

#: Terminal rows below which the trend gets no line of its own.
TREND_MIN_HEIGHT = 30


class ClusterHeader(Vertical):
    """Totals across the cluster plus the strategy, the mode and the source."""

    DEFAULT_CSS = """
    ClusterHeader { height: auto; background: $panel; padding: 0 1; }
    ClusterHeader #totals { height: 1; }
    ClusterHeader #context { height: 1; }
    ClusterHeader #trend { height: 1; }
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
        self._lines: tuple[Text, Text | None, Text | None] | None = None
        self._trend: Text | None = None
        self._trend_at: tuple[int, float] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        yield Static(id="context")
        yield Static(id="trend")
        if self.source == "demo":
            # A new user who ran lmtui without a config must see at once that these nodes
            # are simulated, and where to go next.
            yield Static(DEMO_BANNER, id="demo-banner")

    def show(
        self,
        snapshot: Snapshot,
        history: History | None = None,
        groups: Mapping[str, Sequence[Instance]] | None = None,
    ) -> None:
        """Redraw the totals for ``snapshot`` and the trend of ``history`` (only when their
        text changed); ``groups`` are the snapshot's instances by node, when the caller
        has them."""
        self._totals, self._narrow_totals = header_totals_texts(
            snapshot, groups=groups, gaps=("  ", " ")
        )
        if history is not None and (id(history), history.last_at) != self._trend_at:
            self._trend_at = (id(history), history.last_at)
            self._trend = header_trend(history)
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
        first, second = (
            (one_line, None)
            if width <= 0 or one_line.cell_len <= width
            else (self._narrow_totals, context)
        )
        trend = self._trend
        third: Text | None = None
        if trend is not None:
            last = second if second is not None else first
            if width <= 0 or last.cell_len + len(HEADER_BAR) + trend.cell_len <= width:
                last = last.copy()
                last.append(HEADER_BAR, style="dim")
                last.append_text(trend)
                first, second = (first, last) if second is not None else (last, None)
            elif self.app.size.height >= TREND_MIN_HEIGHT and trend.cell_len <= width:
                third = trend
        lines = (first, second, third)
        before = self._lines
        self._lines = lines
        # Each line is one row high whatever it says, so new text needs no layout of the
        # screen (Static.update's default: the whole screen laid out again every update);
        # a line shown or hidden (``display``) asks for one itself. Only a line whose text
        # changed is given it: each costs a render of the whole width.
        for i, (name, text) in enumerate(
            (("#totals", first), ("#context", second), ("#trend", third))
        ):
            if before is not None and _same_line(text, before[i]):
                continue
            line = self.query_one(name, Static)
            if i:
                line.display = text is not None
            line.update(text or "", layout=False)

    @property
    def totals_text(self) -> str:
        """Totals and context as one line of plain text (for tests and screen readers)."""
        if self._totals is None:
            return ""
        return self._totals.plain + HEADER_BAR + self._context_line().plain

    @property
    def trend_text(self) -> str:
        """The trend as shown (plain text), wherever it went; "" when it is not shown."""
        if self._lines is None or self._trend is None:
            return ""
        shown = " ".join(t.plain for t in self._lines if t is not None)
        return self._trend.plain if self._trend.plain in shown else ""

    @property
    def line_count(self) -> int:
        """How many lines totals, context and trend take now (1 to 3)."""
        return 1 if self._lines is None else sum(1 for t in self._lines if t is not None)


def _same_line(a: Text | None, b: Text | None) -> bool:
    if a is None or b is None:
        return a is b
    return cells_equal(a, b)
