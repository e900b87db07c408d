"""The import rule of ARCHITECTURE.md: tui → engine → backends → core; sim → core at most;
replay → core and config, synchronous and offline."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "lmtui"

HEADLESS = [
    "lmtui.core",
    "lmtui.core.model",
    "lmtui.core.state",
    "lmtui.core.health",
    "lmtui.config",
    "lmtui.backends",
    "lmtui.engine.store",
    "lmtui.engine.poller",
    "lmtui.engine.engine",
    "lmtui.engine.client",
    "lmtui.sim",
    "lmtui.replay",
]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_headless_modules_do_not_import_textual() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {HEADLESS!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'textual')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_core_imports_nothing_from_other_layers_and_no_io() -> None:
    core = sorted((PKG / "core").rglob("*.py"))
    assert core, "lmtui/core is empty"
    banned = (
        "asyncio",
        "httpx",
        "asyncssh",
        "textual",
        "aiohttp",
        "socket",
        "sqlite3",
        "lmtui.config",
        "lmtui.backends",
        "lmtui.engine",
        "lmtui.sim",
        "lmtui.tui",
    )
    for path in core:
        for mod in imports_of(path):
            assert not any(mod == b or mod.startswith(b + ".") for b in banned), (
                f"{path.relative_to(PKG.parent)} imports {mod}"
            )


@pytest.mark.parametrize(
    "layer,allowed",
    [
        ("sim", ("lmtui.core", "lmtui.sim")),
        # The replay drives the pure core in virtual time; its cluster may come from the
        # config. Never the engine (a replay must not depend on the running system).
        ("replay", ("lmtui.core", "lmtui.config", "lmtui.replay")),
        ("backends", ("lmtui.core", "lmtui.config", "lmtui.backends")),
        (
            "engine",
            (
                "lmtui.core",
                "lmtui.config",
                "lmtui.backends",
                "lmtui.engine",
                "lmtui.paths",
                "lmtui.overrides",
            ),
        ),
    ],
)
def test_layers_import_only_downwards(layer: str, allowed: tuple[str, ...]) -> None:
    """``tui`` may import everything below it, so the rule for it is that nothing below
    imports it (``test_nothing_below_imports_the_tui``)."""
    for path in sorted((PKG / layer).rglob("*.py")):
        for mod in imports_of(path):
            if mod.startswith("lmtui."):
                assert mod.startswith(allowed), f"{path.relative_to(PKG.parent)} imports {mod}"


def test_nothing_below_imports_the_tui() -> None:
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "tui" or rel.name in ("cli.py", "__main__.py"):
            continue
        for mod in imports_of(path):
            assert not mod.startswith("lmtui.tui"), f"lmtui/{rel} imports {mod}"


def test_replay_is_synchronous_and_offline() -> None:
    """Virtual time, no event loop: nothing of asyncio, sockets or HTTP clients."""
    banned = ("asyncio", "socket", "httpx", "aiohttp", "asyncssh", "textual", "uvloop")
    for path in sorted((PKG / "replay").rglob("*.py")):
        for mod in imports_of(path):
            assert not any(mod == b or mod.startswith(b + ".") for b in banned), (
                f"{path.relative_to(PKG.parent)} imports {mod}"
            )
    code = (
        "import json, sys, lmtui.replay.cli\n"
        "bad = ('asyncio', 'socket', 'lmtui.engine', 'lmtui.backends', 'lmtui.sim', 'lmtui.tui')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(bad))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
