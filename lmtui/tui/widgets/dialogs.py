"""Modal dialogs for operator commands: confirm a dangerous action, pick one of a list."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: auto; height: auto; max-width: 90%; max-height: 80%;
    border: round $primary; background: $surface; padding: 1 2;
}}
{name} Static {{ width: auto; }}
{name} .title {{ margin-bottom: 1; }}
{name} .hint {{ margin-top: 1; color: $text-muted; }}
"""


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a destructive command: ``y``/``enter`` confirms, ``n``/``escape`` cancels."""

    DEFAULT_CSS = (
        _CSS.format(name="ConfirmScreen")
        + """
    ConfirmScreen > Vertical { border: round $warning; }
    """
    )

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, body: str | Text = "") -> None:
        super().__init__(id="confirm")
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text, style="bold"), classes="title")
            if self.body:
                yield Static(self.body, id="confirm-body")
            yield Static("y / enter: do it    n / escape: cancel", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of ``choices`` (value, label); escape picks nothing."""

    DEFAULT_CSS = (
        _CSS.format(name="ChoiceScreen")
        + """
    ChoiceScreen OptionList { width: auto; min-width: 30; max-height: 20; }
    """
    )

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]

    def __init__(
        self, title: str, choices: Sequence[tuple[str, str]], current: str | None = None
    ) -> None:
        super().__init__(id="choice")
        self.title_text = title
        self.choices = list(choices)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text, style="bold"), classes="title")
            yield OptionList(*(Option(label, id=value) for value, label in self.choices))

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        values = [v for v, _ in self.choices]
        if self.current in values:
            options.highlighted = values.index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
