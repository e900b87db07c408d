"""Themes shipped with lmtui and themes users drop into a folder, one TOML file each.

The user's folder is ``lmtui.config.paths.themes_dir()`` (``~/.config/lmtui/themes`` on
Linux); the CLI loads it after lmtui's own, so a user's theme joins the ``t`` cycle.

A theme file holds the fields of ``textual.theme.Theme``::

    name = "lmtui-night"
    dark = true
    primary = "#5fafff"
    background = "#10141a"
    [variables]
    "footer-key-foreground" = "#ffaf5f"

A broken file must not stop the dashboard from starting: it is skipped and reported once
(the caller shows the messages), and the default theme stays in use.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

#: The themes lmtui ships: ``lmtui/themes`` in an installed wheel (the build copies the
#: repository's ``themes/`` there), the repository's ``themes/`` in a source checkout.
_IN_PACKAGE = Path(__file__).resolve().parents[1] / "themes"
SHIPPED_THEMES_DIR = (
    _IN_PACKAGE if _IN_PACKAGE.is_dir() else Path(__file__).resolve().parents[2] / "themes"
)

_COLOUR_FIELDS = (
    "primary", "secondary", "warning", "error", "success", "accent",
    "foreground", "background", "surface", "panel", "boost",
)  # fmt: skip
_KNOWN = {f.name for f in fields(Theme)} - {"ansi"}


@dataclass(slots=True)
class LoadedThemes:
    """The themes that loaded, and one message per file that did not."""

    themes: list[Theme] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def theme_from_toml(path: Path) -> Theme:
    """Parse one theme file; raise ``ValueError`` naming the file and the bad key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}")
    for key in ("name", "primary"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{path}: {key!r} is required and must be a string")
    for key, kind in (
        ("dark", bool),
        ("luminosity_spread", (int, float)),
        ("text_alpha", (int, float)),
    ):
        if key in data and not isinstance(data[key], kind):
            raise ValueError(f"{path}: {key} = {data[key]!r} has the wrong type")
    for key in _COLOUR_FIELDS:
        if key in data:
            try:
                Color.parse(data[key])
            except (ColorParseError, TypeError) as exc:
                raise ValueError(f"{path}: {key} = {data[key]!r} is not a colour") from exc
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ValueError(f"{path}: [variables] must map names to strings")
    return Theme(**data)


def load_themes(*folders: Path) -> LoadedThemes:
    """Every ``*.toml`` theme in ``folders`` (missing folders are skipped), in name order."""
    out = LoadedThemes()
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                out.themes.append(theme_from_toml(path))
            except ValueError as exc:
                out.errors.append(f"theme not loaded: {exc}")
    return out
