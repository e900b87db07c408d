"""The import rule of docs/architecture.md: tui → engine → backends → http → core; config
below backends and engine; sim → core at most; replay → core and config, synchronous and
offline; and no import circles anywhere."""

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
    "lmtui.http",
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
        "lmtui.http",
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


#: Backends read the schema; where lmtui keeps its files and its overrides is the engine's.
_ENGINE_ONLY_CONFIG = ("lmtui.config.paths", "lmtui.config.overrides")


@pytest.mark.parametrize(
    "layer,allowed,denied",
    [
        ("sim", ("lmtui.core", "lmtui.sim"), ()),
        # The replay drives the pure core in virtual time; its cluster may come from the
        # config. Never the engine (a replay must not depend on the running system).
        ("replay", ("lmtui.core", "lmtui.config", "lmtui.replay"), ()),
        ("config", ("lmtui.core", "lmtui.config"), ()),
        ("http", ("lmtui.core", "lmtui.http"), ()),
        (
            "backends",
            ("lmtui.core", "lmtui.config", "lmtui.http", "lmtui.backends"),
            _ENGINE_ONLY_CONFIG,
        ),
        (
            "engine",
            ("lmtui.core", "lmtui.config", "lmtui.http", "lmtui.backends", "lmtui.engine"),
            (),
        ),
    ],
)
def test_layers_import_only_downwards(
    layer: str, allowed: tuple[str, ...], denied: tuple[str, ...]
) -> None:
    """``tui`` may import everything below it, so the rule for it is that nothing below
    imports it (``test_nothing_below_imports_the_tui``)."""
    for path in sorted((PKG / layer).rglob("*.py")):
        for mod in imports_of(path):
            if mod.startswith("lmtui."):
                ok = mod.startswith(allowed) and not mod.startswith(denied)
                assert ok, f"{path.relative_to(PKG.parent)} imports {mod}"


def test_config_modules_import_each_other_without_a_circle() -> None:
    """The config package is layered inside too: the schema knows nothing of the checks or
    the loader, and no module imports the package's ``__init__`` (which imports them all)."""
    names = {p.stem for p in (PKG / "config").glob("*.py")} - {"__init__"}
    graph = {
        name: {
            mod.removeprefix("lmtui.config.")
            for mod in imports_of(PKG / "config" / f"{name}.py")
            if mod == "lmtui.config" or mod.startswith("lmtui.config.")
        }
        for name in names
    }
    for name, deps in graph.items():
        assert "lmtui.config" not in deps, f"lmtui/config/{name}.py imports the package itself"
    assert graph["schema"].isdisjoint({"checks", "load", "overrides", "paths"}), graph["schema"]
    assert "load" not in graph["checks"], graph["checks"]

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import circle: {' -> '.join((*trail, name))}"
        for dep in graph.get(name, ()):
            visit(dep, (*trail, name))

    for name in sorted(names):
        visit(name, ())


def test_nothing_below_imports_the_tui() -> None:
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "tui" or rel.name in ("cli.py", "__main__.py"):
            continue
        for mod in imports_of(path):
            assert not mod.startswith("lmtui.tui"), f"lmtui/{rel} imports {mod}"


def _module_graph() -> dict[str, set[str]]:
    """lmtui's modules and the lmtui modules each imports at any level of its source
    (``TYPE_CHECKING`` blocks and function bodies included: a circle by type is a circle).
    ``from pkg import mod`` is an edge to ``pkg.mod``; a module's own parent packages,
    which Python imports first anyway, are no edge."""
    mods: dict[str, Path] = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
                out.update(subs)
                if len(subs) < len(node.names):
                    out.add(node.module)
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {m for m in out if m in mods and m != name and m not in parents}
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_engine_pulls_in_nothing_that_imports_it() -> None:
    graph = _module_graph()
    below = _reach(graph, "lmtui.engine.engine")
    assert "lmtui.engine.control" in below  # the test looks at the real graph
    assert not [m for m in below if "lmtui.engine.engine" in graph[m]]


def test_no_module_imports_itself_back() -> None:
    """No import circles anywhere in lmtui (engine ↔ control ↔ control_api and
    config ↔ _config_checks were two)."""
    graph = _module_graph()
    circles = sorted(m for m in graph if m in _reach(graph, m))
    assert circles == []


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
