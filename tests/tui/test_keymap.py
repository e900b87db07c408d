"""``[keymap]`` in the config remaps the dashboard's keys, from the file to a keypress."""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding

from lmtui.config import BINDING_IDS, key_strings, load_config
from lmtui.tui.app import LmtuiApp, build_app
from lmtui.tui.widgets.help import HelpScreen

from .fakes import FIXED_NOW, FakeClient, fixed_cluster
from .test_app import SIZE, started, until


def test_the_config_knows_exactly_the_ids_of_the_dashboards_bindings() -> None:
    # The config package keeps the ids as data (it may not import the UI); this keeps the
    # two lists from drifting apart.
    ids = [b.id for b in LmtuiApp.BINDINGS if isinstance(b, Binding)]
    assert None not in ids
    assert tuple(ids) == BINDING_IDS


async def test_a_key_remapped_in_the_config_fires_and_the_old_one_does_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[keymap]\ntheme = "T"\nhelp = ["f1", "h"]\n')
    keymap = key_strings(load_config(path).keymap)
    assert keymap == {"theme": "T", "help": "f1,h"}
    snap, events = fixed_cluster()
    client = FakeClient(snap, events)
    app = build_app(client, clock=lambda: FIXED_NOW, keymap=keymap)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        before = app.theme
        await pilot.press("t")
        await pilot.pause()
        assert app.theme == before  # 't' no longer switches the theme
        await pilot.press("T")
        await until(pilot, lambda: app.theme != before)
        await pilot.press("question_mark")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)  # nor does '?' open the help
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert isinstance(app.screen, HelpScreen)
        shown = {d: k for k, d, _ in app.screen.keys}
        assert shown["Theme"] == "T"
        assert shown["Quit"] == "q"  # bindings not in the keymap keep their keys
