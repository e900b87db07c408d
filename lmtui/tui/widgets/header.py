"""The header: cluster totals on one line, and the demo banner when there is no config."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from lmtui.core.model import Snapshot
from lmtui.tui.render import DEMO_BANNER, cells_equal, header_text


class ClusterHeader(Vertical):
    """Totals across the cluster plus where its description came from."""

    DEFAULT_CSS = """
    ClusterHeader { height: auto; background: $panel; padding: 0 1; }
    ClusterHeader #totals { height: 1; }
    ClusterHeader #demo-banner { height: 1; color: $warning; text-style: bold; }
    """

    def __init__(self, source: str, *, read_only: bool = False) -> None:
        super().__init__(id="header")
        self.source = source
        self.read_only = read_only
        self._shown: Text | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="totals")
        if self.source == "demo":
            # A new user who ran lmtui without a config must see at once that these nodes
            # are simulated, and where to go next.
            yield Static(DEMO_BANNER, id="demo-banner")

    def show(self, snapshot: Snapshot) -> None:
        """Redraw the totals line for ``snapshot`` (only when its text changed)."""
        text = header_text(snapshot, self.source, read_only=self.read_only)
        if self._shown is None or not cells_equal(text, self._shown):
            self._shown = text
            self.query_one("#totals", Static).update(text)

    @property
    def totals_text(self) -> str:
        """The totals line as plain text (for tests and screen readers)."""
        return self._shown.plain if self._shown is not None else ""
