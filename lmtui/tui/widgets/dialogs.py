"""Modal dialogs for operator commands: confirm a dangerous action (or force one, with a key
of its own), pick one of a list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
{name} Static {{ width: auto; max-width: 100%; }}
{name} .title {{ margin-bottom: 1; }}
{name} .hint {{ margin-top: 1; color: $text-muted; }}
"""


class _AskScreen(ModalScreen[bool]):
    """A question with a title, a body and a hint naming the keys; subclasses bind them."""

    HINT = ""

    def __init__(self, title: str, body: str | Text = "", *, id: str) -> None:
        super().__init__(id=id)
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text, style="bold"), classes="title")
            if self.body:
                yield Static(self.body, id="confirm-body")
            yield Static(self.HINT, classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ConfirmScreen(_AskScreen):
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
    HINT = "y / enter: do it    n / escape: cancel"

    def __init__(self, title: str, body: str | Text = "") -> None:
        super().__init__(title, body, id="confirm")


class ForceScreen(_AskScreen):
    """Ask before cutting off running requests: only ``f`` confirms, so the ``y``/``enter``
    that answers every other dialog cannot force by habit; ``n``/``escape`` cancels."""

    DEFAULT_CSS = (
        _CSS.format(name="ForceScreen")
        + """
    ForceScreen > Vertical { border: round $error; }
    """
    )

    BINDINGS = [
        Binding("f", "answer(True)", "Force", id="force.yes"),
        Binding("n,escape", "answer(False)", "No", id="force.no"),
    ]
    HINT = "f: force it    n / escape: cancel"

    def __init__(self, title: str, body: str | Text = "") -> None:
        super().__init__(title, body, id="force")


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of ``choices`` (value, label); escape picks nothing. With ``notes`` (value
    -> text), the highlighted choice's note shows under the list (the load dialog's
    memory-fit preview)."""

    DEFAULT_CSS = (
        _CSS.format(name="ChoiceScreen")
        + """
    ChoiceScreen OptionList { width: auto; min-width: 30; max-height: 20; }
    ChoiceScreen #choice-note { width: auto; max-width: 64; margin-top: 1; }
    """
    )

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]

    def __init__(
        self,
        title: str,
        choices: Sequence[tuple[str, str]],
        current: str | None = None,
        *,
        notes: Mapping[str, str | Text] | None = None,
    ) -> None:
        super().__init__(id="choice")
        self.title_text = title
        self.choices = list(choices)
        self.current = current
        self.notes = dict(notes or {})

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text, style="bold"), classes="title")
            yield OptionList(*(Option(label, id=value) for value, label in self.choices))
            if self.notes:
                yield Static("", id="choice-note")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self.notes and event.option.id is not None:
            self.query_one("#choice-note", Static).update(self.notes.get(event.option.id, ""))

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
