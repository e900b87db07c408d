"""The filter input: typing narrows the model table to rows containing the text."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """A one-line input, hidden until ``/``; Escape clears it and hides it again.

    It posts ``FilterBar.FilterChanged`` on every keystroke; the app passes the text down to the
    model table (messages up, attributes down).
    """

    DEFAULT_CSS = """
    FilterBar { dock: bottom; display: none; border: tall $accent; }
    FilterBar.-active { display: block; }
    """

    BINDINGS = [Binding("escape", "close", "Close filter", id="filter.close")]

    class FilterChanged(Message):
        """The filter text changed."""

        def __init__(self, needle: str) -> None:
            super().__init__()
            self.needle = needle

    def __init__(self) -> None:
        super().__init__(placeholder="filter models (model, node or instance id)", id="filter")

    def open(self) -> None:
        """Show the bar and put the cursor in it."""
        self.add_class("-active")
        self.focus()

    def action_close(self) -> None:
        """Clear the filter, hide the bar and give focus back to the tables."""
        self.value = ""
        self.remove_class("-active")
        self.screen.focus_next()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.FilterChanged(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        # Enter keeps the filter and returns to the tables, so the keys work again.
        event.stop()
        self.screen.focus_next()
