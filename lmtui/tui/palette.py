"""The command palette's lmtui commands (``ctrl+p``): every action by name, and the views.

Two Textual command providers, added to ``App.COMMANDS`` next to Textual's own system
commands (theme, keys, maximize, ...):

- ``ActionsProvider`` offers every dashboard action under a name an operator would type
  ("pin", "drain", "rebalance"), shown with the key that runs it *now* (after ``[keymap]``)
  and its help text. Choosing one runs the same action as the key, on the row under the
  cursor, through the same checks and confirmations; in ``--read-only`` a command says so.
- ``ViewsProvider`` opens the detail screen of any node or model by name.

Both offer nothing over a dialog or a detail screen: their actions act on the main
screen's cursor, which such a screen hides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from lmtui.core.model import Snapshot


class LmtuiApp(Protocol):
    """What the palette needs of ``lmtui.tui.app.LmtuiApp`` (which imports this module)."""

    snapshot: Snapshot | None

    def keys_by_binding_id(self) -> dict[str, str]: ...
    def keys_by_action(self) -> dict[str, str]: ...
    def id_bindings(self) -> list[Binding]: ...
    def is_refused(self, action: str) -> bool: ...
    async def run_palette_action(self, binding: Binding) -> None: ...
    def action_details(self) -> None: ...
    def focus_table(self, which: Literal["nodes", "models"]) -> None: ...
    def open_detail(self, kind: Literal["node", "model"], name: str) -> None: ...


#: The palette's name for each binding id (``lmtui.config.keymap.BINDING_IDS``): the words
#: an operator would type. An id missing here falls back to the binding's description.
NAMES: dict[str, str] = {
    "quit": "Quit lmtui",
    "help": "Help: list every key",
    "theme": "Next theme",
    "screenshot": "Screenshot (SVG in the state directory)",
    "filter": "Filter the model table",
    "verbose": "Verbose event log (routing shown or hidden)",
    "load": "Load a model",
    "unload": "Unload the selected instance",
    "pin": "Pin or unpin the selected model",
    "evict": "Evict the selected instance",
    "drain": "Drain or undrain the selected node",
    "strategy": "Routing strategy",
    "rebalance": "Rebalance the cluster",
}
#: Textual's system commands that lmtui's own replace: its "Screenshot" saves to
#: ~/Downloads (lmtui's goes to the state directory), its "Quit" is ours under our key.
REPLACED_SYSTEM_COMMANDS = frozenset({"Screenshot", "Quit"})


@dataclass(frozen=True, slots=True)
class PaletteCommand:
    """One line of the palette: a name, the key that does the same, what it does."""

    name: str
    key: str
    help: str
    run: Callable[[], object]


def action_commands(app: LmtuiApp) -> list[PaletteCommand]:
    """Every dashboard action as the palette lists it, in the help's order."""
    keys = app.keys_by_binding_id()
    out: list[PaletteCommand] = []
    for binding in app.id_bindings():
        assert binding.id is not None
        help_text = binding.tooltip or binding.description
        if app.is_refused(binding.action):
            help_text += " (refused: lmtui is read-only)"
        out.append(
            PaletteCommand(
                NAMES.get(binding.id, binding.description),
                keys.get(binding.id, ""),
                help_text,
                partial(app.run_palette_action, binding),
            )
        )
    by_action = app.keys_by_action()
    out += [
        PaletteCommand(
            "Details of the selected row",
            by_action.get("select_cursor", "enter"),
            "The node or model under the cursor, on its own screen",
            app.action_details,
        ),
        PaletteCommand(
            "Focus the node table",
            by_action.get("focus_next", "tab"),
            "Put the cursor in the node table",
            lambda: app.focus_table("nodes"),
        ),
        PaletteCommand(
            "Focus the model table",
            by_action.get("focus_next", "tab"),
            "Put the cursor in the model table",
            lambda: app.focus_table("models"),
        ),
    ]
    return out


def view_commands(app: LmtuiApp) -> list[PaletteCommand]:
    """A detail screen per node and per model the snapshot knows (loaded, queued for, or
    in a node's catalogue), by name."""
    snap = app.snapshot
    if snap is None:
        return []
    out = [
        PaletteCommand(
            f"Node {name}",
            "",
            f"{node.kind.value} at {node.url}"[:120],
            partial(app.open_detail, "node", name),
        )
        for name, node in sorted(snap.nodes.items())
    ]
    models = {i.model for i in snap.instances.values()}
    models |= {a.key for n in snap.nodes.values() for a in n.available}
    models |= {m for m, n in snap.queue_depth.items() if n}
    for model in sorted(models):
        where = sorted({i.node for i in snap.instances_of(model)})
        out.append(
            PaletteCommand(
                f"Model {model}",
                "",
                f"loaded on {', '.join(where)}" if where else "not loaded",
                partial(app.open_detail, "model", model),
            )
        )
    return out


def _display(name: Content | str, key: str) -> Content:
    return Content.assemble(name, ("  " + key, "bold $accent")) if key else Content(str(name))


class _LmtuiProvider(Provider):
    """Matches the query against each command's name (Textual's fuzzy matcher)."""

    def _commands(self) -> list[PaletteCommand]:
        raise NotImplementedError

    def _here(self) -> Iterator[PaletteCommand]:
        # Only from the main screen: the actions act on its cursor.
        if self.screen is not self.app.screen_stack[0]:
            return
        yield from self._commands()

    async def discover(self) -> Hits:
        for c in self._here():
            yield DiscoveryHit(_display(c.name, c.key), c.run, text=c.name, help=c.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for c in self._here():
            score = max(matcher.match(c.name), matcher.match(c.key) if c.key else 0)
            if score > 0:
                yield Hit(
                    score,
                    _display(matcher.highlight(c.name), c.key),
                    c.run,
                    text=c.name,
                    help=c.help,
                )


class ActionsProvider(_LmtuiProvider):
    """Every dashboard action, with its key and help text."""

    def _commands(self) -> list[PaletteCommand]:
        return action_commands(self.app)  # type: ignore[arg-type]


class ViewsProvider(_LmtuiProvider):
    """The detail screen of every node and model, by name."""

    def _commands(self) -> list[PaletteCommand]:
        return view_commands(self.app)  # type: ignore[arg-type]
