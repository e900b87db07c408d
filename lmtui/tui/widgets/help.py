"""The help screen: a modal listing the keys as they are bound now (after any remap)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

#: (key as displayed, description, tooltip) for each binding.
KeyHelp = tuple[str, str, str]


def key_lines(keys: Sequence[KeyHelp]) -> Text:
    """Three aligned columns, as plain text: a Rich table inside an auto-width modal
    collapses to its minimum width, so the padding is done here instead."""
    key_w = max((len(k) for k, _, _ in keys), default=0)
    desc_w = max((len(d) for _, d, _ in keys), default=0)
    out = Text()
    for i, (key, description, tooltip) in enumerate(keys):
        if i:
            out.append("\n")
        out.append(key.ljust(key_w + 2), style="bold")
        out.append(description.ljust(desc_w + 2))
        out.append(tooltip, style="dim")
    return out


class HelpScreen(ModalScreen[None]):
    """Lists the keys; any of escape, q or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: auto; height: auto; max-width: 90%;
        border: round $primary; background: $surface; padding: 1 2;
    }
    /* Size to the content: a 1fr Static inside an auto-width box collapses to nothing. */
    HelpScreen Static { width: auto; }
    HelpScreen #help-title { margin-bottom: 1; }
    """

    BINDINGS = [
        Binding("escape", "close", "Close", id="help.close"),
        Binding("q", "close", "Close", show=False, id="help.close_q"),
        Binding("question_mark", "close", "Close", show=False, id="help.close_help"),
    ]

    def __init__(self, keys: Sequence[KeyHelp]) -> None:
        super().__init__(id="help")
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]Keys[/b]", id="help-title")
            yield Static(key_lines(self.keys), id="help-keys")

    def action_close(self) -> None:
        self.dismiss(None)
