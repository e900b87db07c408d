"""Theme files: lmtui's own load, broken ones are reported once and skipped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import lmtui.config.paths
from lmtui import cli
from lmtui.tui.app import build_app
from lmtui.tui.themes import SHIPPED_THEMES_DIR, load_themes, theme_from_toml

from .fakes import FIXED_NOW, FakeClient, fixed_cluster


def test_shipped_themes_load() -> None:
    loaded = load_themes(SHIPPED_THEMES_DIR)
    assert loaded.errors == []
    names = {t.name for t in loaded.themes}
    assert {"lmtui-night", "lmtui-day"} <= names
    day = next(t for t in loaded.themes if t.name == "lmtui-day")
    assert day.dark is False


@pytest.mark.parametrize(
    "body,message",
    [
        ('name = "x"\nprimary = "#123456"\ncolour = "red"\n', "unknown key 'colour'"),
        ('name = "x"\n', "'primary' is required"),
        ('name = "x"\nprimary = "not-a-colour"\n', "is not a colour"),
        ('name = "x"\nprimary = "#fff"\ndark = "yes"\n', "wrong type"),
        ('name = "x\n', "x.toml"),
    ],
)
def test_broken_theme_names_the_file_and_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=r"x\.toml") as info:
        theme_from_toml(path)
    assert message in str(info.value)


def test_load_skips_broken_and_missing(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text('name = "good"\nprimary = "#336699"\n')
    (tmp_path / "bad.toml").write_text("name = \n")
    loaded = load_themes(tmp_path, tmp_path / "does-not-exist")
    assert [t.name for t in loaded.themes] == ["good"]
    assert len(loaded.errors) == 1 and "bad.toml" in loaded.errors[0]


async def test_app_registers_themes_and_reports_broken_once(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('name = "mine"\nprimary = "#336699"\n')
    (tmp_path / "broken.toml").write_text('name = "broken"\n')
    snap, events = fixed_cluster()
    app = build_app(
        FakeClient(snap, events), clock=lambda: FIXED_NOW, theme_dirs=[SHIPPED_THEMES_DIR, tmp_path]
    )
    async with app.run_test(size=(120, 30)) as pilot:
        async with asyncio.timeout(5):
            while not app._notifications:
                await pilot.pause(0.01)
        assert {"mine", "lmtui-night", "lmtui-day"} <= set(app.available_themes)
        assert "broken" not in app.available_themes
        messages = [n.message for n in app._notifications]
        assert len(messages) == 1 and "broken.toml" in messages[0]
        assert app.theme == "textual-dark"  # the default stays in use


async def test_a_theme_in_the_users_folder_joins_the_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmtui.config.paths, "config_dir", lambda: tmp_path)
    assert cli._theme_dirs() == (SHIPPED_THEMES_DIR, tmp_path / "themes")
    # No folder yet: lmtui's own themes only, and nothing to report.
    snap, events = fixed_cluster()
    app = build_app(FakeClient(snap, events), theme_dirs=cli._theme_dirs())
    assert "mine" not in app.available_themes and app.theme_errors == []
    (tmp_path / "themes").mkdir()
    (tmp_path / "themes" / "mine.toml").write_text('name = "mine"\nprimary = "#336699"\n')
    app = build_app(FakeClient(snap, events), clock=lambda: FIXED_NOW, theme_dirs=cli._theme_dirs())
    async with app.run_test(size=(120, 30)) as pilot:
        seen = {app.theme}
        for _ in range(len(app.available_themes)):
            await pilot.press("t")
            seen.add(app.theme)
        assert {"mine", "lmtui-night", "lmtui-day"} <= seen
        assert app.theme_errors == []
