"""The theme chosen is kept for the next run; ``ctrl+s`` saves an SVG in the state
directory; lmtui ships a dark, a light and a high-contrast theme."""

from __future__ import annotations

import os
from pathlib import Path

from lmtui.tui.app import build_app, read_prefs
from lmtui.tui.themes import SHIPPED_THEMES_DIR, load_themes

from .fakes import FIXED_NOW, FakeClient, fixed_cluster
from .test_app import SIZE, started, until


def app_with(prefs: Path, shots: Path):  # type: ignore[no-untyped-def]
    snap, events = fixed_cluster()
    client = FakeClient(snap, events)
    app = build_app(client, clock=lambda: FIXED_NOW, prefs_path=prefs, screenshot_dir=shots)
    return app, client


def test_three_themes_ship_dark_light_and_high_contrast() -> None:
    loaded = load_themes(SHIPPED_THEMES_DIR)
    assert loaded.errors == []
    by = {t.name: t for t in loaded.themes}
    assert {"lmtui-night", "lmtui-day", "lmtui-contrast"} <= set(by)
    assert by["lmtui-night"].dark and not by["lmtui-day"].dark
    assert by["lmtui-contrast"].background == "#000000"


async def test_the_theme_chosen_is_kept_for_the_next_run(tmp_path: Path) -> None:
    prefs = tmp_path / "state" / "tui.toml"
    app, client = app_with(prefs, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        first = app.theme
        await pilot.press("t")
        await until(pilot, lambda: app.theme != first)
        chosen = app.theme
    assert read_prefs(prefs) == {"theme": chosen}
    assert os.stat(prefs).st_mode & 0o777 == 0o600
    again, client2 = app_with(prefs, tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await started(pilot, client2)
        assert again.theme == chosen


async def test_a_kept_theme_that_is_gone_is_said_once_and_the_default_stays(
    tmp_path: Path,
) -> None:
    prefs = tmp_path / "tui.toml"
    prefs.write_text('theme = "deleted-theme"\n')
    app, _client = app_with(prefs, tmp_path)
    assert any("deleted-theme" in m for m in app.theme_errors)
    assert app.theme != "deleted-theme"
    broken = tmp_path / "broken.toml"
    broken.write_text("theme = [\n")
    assert read_prefs(broken) == {}


async def test_ctrl_s_saves_an_svg_in_the_state_directory(tmp_path: Path) -> None:
    shots = tmp_path / "state"
    app, client = app_with(tmp_path / "tui.toml", shots)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: shots.is_dir() and any(shots.glob("*.svg")))
    (svg,) = shots.glob("*.svg")
    assert svg.read_text().lstrip().startswith("<svg")
