"""``[keymap]``: which keys run the dashboard's commands, as the user remaps them.

The table maps a binding id to its keys: one key, several comma-separated (as Textual's
``App.set_keymap`` takes them), or an array::

    [keymap]
    theme = "T"
    quit = ["q", "ctrl+q"]

The ids are data here, not read from the UI, because the config package must not import
Textual or ``lmtui.tui`` (the headless router loads the same config). Keeping them here
lets a typo be reported at load, with its file and line, like every other config problem;
``tests/tui/test_keymap.py`` checks that this list is exactly the ids of the dashboard's
bindings, so the two cannot drift apart. The bindings of the dialogs (confirm, choose,
help, filter) are not remappable: their hints are fixed text.

Key names are Textual's: a character (``"T"``, ``"?"``), a key name (``"f2"``,
``"escape"``, ``"question_mark"``), modifiers joined with ``+`` (``"ctrl+q"``). Only the
shape is checked here; Textual ignores a well-formed name it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The ids of the dashboard's bindings (``LmtuiApp.BINDINGS``), in the order of its help.
BINDING_IDS = (
    "quit",
    "help",
    "theme",
    "screenshot",
    "filter",
    "verbose",
    "load",
    "unload",
    "pin",
    "evict",
    "drain",
    "strategy",
    "rebalance",
)

_MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})
_KEY_NAME = re.compile(r"[a-z0-9_]+")


def split_keys(value: str | list[str]) -> list[str]:
    """The keys of one ``[keymap]`` value: a comma-separated string or an array of keys."""
    parts = value.split(",") if isinstance(value, str) else value
    return [p.strip() for p in parts]


def key_problem(key: str) -> str | None:
    """What is wrong with one key as written, or None when it is shaped like a key."""
    hint = (
        "write a character ('T', '?'), a key name ('f2', 'escape', 'question_mark') or"
        " modifiers and a key joined by + ('ctrl+q')"
    )
    if not key:
        return f"an empty key; {hint}"
    if len(key) == 1:
        return "write 'comma' for the , key" if key == "," else None
    *modifiers, last = key.split("+")
    if modifiers and last == "":
        return f"{key!r} ends with +; write 'plus' for the + key"
    unknown = [m for m in modifiers if m not in _MODIFIERS]
    if unknown:
        return (
            f"{key!r}: {unknown[0]!r} is not a modifier (one of: {', '.join(sorted(_MODIFIERS))})"
        )
    if len(last) == 1 or _KEY_NAME.fullmatch(last):
        return None
    if _KEY_NAME.fullmatch(last.lower()):
        return f"{key!r}: key names are lower case ({last.lower()!r})"
    return f"{key!r} is not a key; {hint}"


def key_strings(keymap: Mapping[str, str | list[str]]) -> dict[str, str]:
    """The keymap as ``App.set_keymap`` takes it: binding id -> comma-separated keys."""
    return {binding: ",".join(split_keys(keys)) for binding, keys in keymap.items()}
