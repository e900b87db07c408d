"""The command palette (ctrl+p): every action by name with its key, and the views."""

from __future__ import annotations

from textual.command import CommandList, CommandPalette
from textual.widgets import Input

from lmtui.config import BINDING_IDS
from lmtui.tui.app import build_app
from lmtui.tui.palette import NAMES
from lmtui.tui.widgets.detail_screens import ModelScreen, NodeScreen
from lmtui.tui.widgets.dialogs import ConfirmScreen
from lmtui.tui.widgets.model_table import ModelTable

from .fakes import FIXED_NOW, FakeClient, fixed_cluster
from .test_app import SIZE, started, until


def app_for(keymap: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    snap, events = fixed_cluster()
    client = FakeClient(snap, events, **kw)
    return build_app(client, clock=lambda: FIXED_NOW, keymap=keymap), client


def hits(app) -> list[str]:  # type: ignore[no-untyped-def]
    options = app.screen.query_one(CommandList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def search(pilot, app, query: str) -> list[str]:  # type: ignore[no-untyped-def]
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette))
    app.screen.query_one(Input).value = query
    word = query.split()[-1].lower()
    await until(pilot, lambda: bool(hits(app)) and word in hits(app)[0].lower())
    return hits(app)


def test_every_binding_has_a_palette_name() -> None:
    assert set(NAMES) == set(BINDING_IDS)


async def test_search_finds_an_action_by_name_with_its_key_and_runs_it() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        found = await search(pilot, app, "pin or unpin")
        assert found[0].startswith("Pin or unpin the selected model  p")
        await pilot.press("enter")  # the row under the cursor: gemma-3-12b, not pinned
        await until(pilot, lambda: ("pin", "gemma-3-12b") in client.commands)


async def test_a_destructive_action_from_the_palette_asks_first() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await search(pilot, app, "drain or undrain")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert client.commands == []
        await pilot.press("y")
        await until(pilot, lambda: client.commands == [("drain", "mac-studio")])


async def test_a_remapped_key_shows_in_the_palette() -> None:
    app, client = app_for(keymap={"pin": "P", "rebalance": "f5,R"})
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        found = await search(pilot, app, "pin or unpin")
        assert found[0].startswith("Pin or unpin the selected model  P")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CommandPalette))
        found = await search(pilot, app, "rebalance")
        assert found[0].startswith("Rebalance the cluster  f5 / R")


async def test_read_only_refuses_a_command_from_the_palette_and_says_so() -> None:
    app, client = app_for(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await search(pilot, app, "drain or undrain")
        await pilot.press("enter")
        await until(pilot, lambda: bool(app._notifications))
        await pilot.pause(0.1)
        assert client.commands == []
        assert not isinstance(app.screen, ConfirmScreen)
        told = [(n.message, n.severity) for n in app._notifications]
        assert told == [("Drain: lmtui is read-only (--read-only)", "warning")]


async def test_a_node_or_model_view_opens_by_name() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await search(pilot, app, "node gpu-box")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen))
        assert app.screen.node == "gpu-box"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NodeScreen))
        await search(pilot, app, "model llama3.1")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ModelScreen))
        assert app.screen.model == "llama3.1:8b"


async def test_textuals_own_commands_stay_but_its_screenshot_is_ours() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        found = await search(pilot, app, "theme")
        assert any(h.startswith("Theme") for h in found)  # Textual's theme picker
        assert any(h.startswith("Next theme  t") for h in found)
        await pilot.press("escape")
        found = await search(pilot, app, "screenshot")
        assert [h.splitlines()[0] for h in found if h.startswith("Screenshot")] == [
            "Screenshot (SVG in the state directory)  ^s"
        ]
