"""The help screen: a modal listing every key as it is bound now (after any remap).

The commands come from the app's bindings that have an id (the remappable ones). The keys
for moving around and for the dialogs come from the bindings of the widgets that answer
them (the tables, the screen, the app's own, the dialogs, the filter); this module only
groups them into rows and words the rows for lmtui, so a key Textual adds or moves still
shows up, under its own description when no row here names its action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static

from lmtui.tui.widgets.detail_screens import DetailScreen
from lmtui.tui.widgets.dialogs import ChoiceScreen, ConfirmScreen, ForceScreen
from lmtui.tui.widgets.filter_bar import FilterBar
from lmtui.tui.widgets.keyed_table import KeyedTable

#: (key as displayed, description, tooltip) for each binding.
KeyHelp = tuple[str, str, str]
#: A titled group of keys.
KeySection = tuple[str, Sequence[KeyHelp]]

#: Rows for the keys that move around, by action: actions that share a row share its keys.
MOVING: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        ("cursor_up", "cursor_down", "page_up", "page_down", "scroll_top", "scroll_bottom"),
        ("Move", "the cursor: a row, a page, the first or last row"),
    ),
    **dict.fromkeys(
        ("focus_next", "focus_previous"),
        ("Focus", "the next or previous of the tables and the event log"),
    ),
    "select_cursor": ("Details", "of the node or model under the cursor: its own screen"),
    "command_palette": (
        "Palette",
        "every action and view by name, with its key",
    ),
    "quit": ("Quit", "Leave lmtui"),
    "copy_text": ("Copy", "the selected text"),
}
#: Bound but not worth a row of the help (none at the moment).
NOT_LISTED: frozenset[str] = frozenset()


def _owner_bindings(owner: type[DOMNode]) -> list[Binding]:
    """The bindings instances of ``owner`` have: its ``BINDINGS`` over its bases' (unless
    a class says ``inherit_bindings=False``), a key bound again replacing the base's
    binding in place, as Textual merges them."""
    merged: dict[str, Binding] = {}
    for cls in reversed(owner.__mro__):
        if issubclass(cls, DOMNode) and "BINDINGS" in cls.__dict__:
            if not cls.__dict__.get("_inherit_bindings", True):
                merged.clear()
            own: list[BindingType] = list(cls.__dict__["BINDINGS"])
            for b in Binding.make_bindings(own):
                merged[b.key] = b
    return list(merged.values())


def dialog_rows() -> list[tuple[str, str, list[tuple[type[DOMNode], str]]]]:
    """(description, tooltip, the (widget class, action) pairs whose keys the row lists)."""
    return [
        ("Yes", "in a confirmation: do it", [(ConfirmScreen, "answer(True)")]),
        ("Force", "unloading a busy model: cut its requests off", [(ForceScreen, "answer(True)")]),
        ("No", "cancel", [(ConfirmScreen, "answer(False)"), (ForceScreen, "answer(False)")]),
        (
            "Close",
            "a list, the filter (clearing it), a detail screen, this help",
            [
                (ChoiceScreen, "cancel"),
                (FilterBar, "close"),
                (DetailScreen, "close"),
                (HelpScreen, "close"),
            ],
        ),
        (
            "Pick",
            "in a list: choose it; in the filter: keep it, back to the tables",
            [(OptionList, "select"), (Input, "submit")],
        ),
    ]


def _rows(
    bindings: Iterable[Binding],
    names: Callable[[str], tuple[str, str] | None],
    display: Callable[[Binding], str],
) -> list[KeyHelp]:
    """One row per (description, tooltip), keys in binding order, each key once."""
    rows: dict[tuple[str, str], list[str]] = {}
    for b in bindings:
        action = b.action.rpartition(".")[2]  # "app.focus_next" -> "focus_next"
        if action in NOT_LISTED:
            continue
        row = names(action) or (b.description, b.tooltip)
        keys = rows.setdefault(row, [])
        if (key := display(b)) not in keys:
            keys.append(key)
    return [(" ".join(keys), desc, tip) for (desc, tip), keys in rows.items()]


def other_keys(
    app_bindings: Iterable[Binding], display: Callable[[Binding], str]
) -> list[KeySection]:
    """The keys besides the commands: moving around (the tables' bindings, then the screen's
    and the app's ``app_bindings`` without an id) and those of the dialogs and the filter."""
    moving = _rows([*_owner_bindings(KeyedTable), *app_bindings], MOVING.get, display)
    dialog: list[KeyHelp] = []
    for description, tooltip, sources in dialog_rows():
        keys: list[str] = []
        for owner, action in sources:
            for b in _owner_bindings(owner):
                if b.action == action and (key := display(b)) not in keys:
                    keys.append(key)
        if keys:
            dialog.append((" ".join(keys), description, tooltip))
    return [("Moving around", moving), ("In dialogs and the filter", dialog)]


def key_lines(keys: Sequence[KeyHelp], sections: Sequence[KeySection] = ()) -> Text:
    """Three aligned columns, as plain text: a Rich table inside an auto-width modal
    collapses to its minimum width, so the padding is done here instead. Each section
    follows under its title, aligned on its own (a long key there must not push the
    commands' descriptions across the screen)."""
    out = Text()

    def add(rows: Sequence[KeyHelp]) -> None:
        key_w = max((len(k) for k, _, _ in rows), default=0)
        desc_w = max((len(d) for _, d, _ in rows), default=0)
        for key, description, tooltip in rows:
            if out:
                out.append("\n")
            out.append(key.ljust(key_w + 2), style="bold")
            out.append(description.ljust(desc_w + 2))
            out.append(tooltip, style="dim")

    add(keys)
    for title, rows in sections:
        if rows:
            out.append("\n\n" if out else "")
            out.append(title, style="bold underline")
            add(rows)
    return out


class HelpScreen(ModalScreen[None]):
    """Lists the keys; any of escape, q or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: auto; height: auto; max-width: 90%; max-height: 100%; overflow-y: auto;
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

    def __init__(self, keys: Sequence[KeyHelp], sections: Sequence[KeySection] = ()) -> None:
        super().__init__(id="help")
        #: The commands (and the app's other keys with an id), as bound now.
        self.keys = list(keys)
        #: Moving around, the dialogs and the filter.
        self.sections = list(sections)

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("[b]Keys[/b]", id="help-title")
            yield Static(key_lines(self.keys, self.sections), id="help-keys")

    def on_mount(self) -> None:
        # Focused, the list scrolls with the arrow keys on a terminal too short for it.
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
