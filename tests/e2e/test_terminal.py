"""``lmtui --demo`` in a real terminal: tmux runs it, ``send-keys`` types, ``capture-pane``
reads the screen. A pin made by keystroke shows in the model table, and at 80x24 the
model table keeps its Queued column.

tmux runs on a private socket (``-L``) with no user config, the app with a temporary HOME
and XDG directories (nothing read from or left in the user's own), and every wait polls
the screen against a deadline; the tmux server is killed at the end whatever happens.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: Seconds any one screen state may take to appear (the demo starts its simulated nodes
#: first: about 3 s on a loaded 2-core machine).
DEADLINE_S = 30.0


class Tmux:
    """One tmux server on a private socket, running one window."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def run(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "t", *(["-l"] if literal else []), *keys)

    def wait_for(self, what: str, ok: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            screen = self.screen()
            if ok(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {DEADLINE_S}s; the screen:\n{screen}")
            time.sleep(0.2)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs Debian's tmux)")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "TERM": "xterm-256color",
    }
    command = " ".join(
        [
            "env",
            "-u",
            "LMTUI_CONFIG",
            *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
            shlex.quote(sys.executable),
            "-m",
            "lmtui",
            "--demo",
        ]
    )
    t = Tmux(f"lmtui-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    socket_path: Path | None = None
    try:
        t.run("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "48", "-s", "t", command)
        t.run("set-option", "-s", "escape-time", "0")  # escape is a key, not a prefix
        socket_path = Path(t.run("display-message", "-p", "#{socket_path}").strip())
        yield t
    finally:
        subprocess.run(["tmux", "-L", t.socket, "kill-server"], capture_output=True, timeout=10)
    if socket_path is not None:
        socket_path.unlink(missing_ok=True)  # tmux leaves the socket file of a killed server


def table_rows(screen: str) -> list[str]:
    """The model table's rows (between its header line and the event log's title)."""
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("─Models")), None)
    end = next((i for i, line in enumerate(lines) if line.startswith("─Events")), None)
    if start is None or end is None:
        return []
    return [line for line in lines[start + 2 : end] if line.strip()]


def rows_of(screen: str, model: str) -> list[str]:
    """The rows of ``model``, its name perhaps cut short ("qwen2.5-7b-inst…")."""
    return [
        row
        for row in table_rows(screen)
        if model.startswith(row.split()[0].rstrip("…")) and len(row.split()[0]) > 8
    ]


def test_a_pin_by_keystroke_shows_and_80x24_keeps_queued(tmux: Tmux, tmp_path: Path) -> None:
    model = "qwen2.5-7b-instruct"  # loaded on linux-ollama in the demo, not pinned
    screen = tmux.wait_for(f"{model} in the model table", lambda s: bool(rows_of(s, model)))
    assert all(" yes " not in row for row in rows_of(screen, model))
    # Filter the table down to that model, so the cursor is on its row, and pin it.
    tmux.keys("/")
    # Typed before the filter has the focus, the name's letters would be commands (q quits).
    tmux.wait_for("the filter bar", lambda s: "▔▔▔▔▔▔" in s)
    tmux.keys(model, literal=True)
    tmux.wait_for("the filtered model table", lambda s: len(table_rows(s)) == 1)
    tmux.keys("Enter")
    tmux.keys("p")
    screen = tmux.wait_for(
        "the pin in the model table", lambda s: any(" yes " in r for r in rows_of(s, model))
    )
    # The app's state (its log) went to the temporary state directory, not the user's.
    assert (tmp_path / "home" / "state" / "lmtui").is_dir()

    tmux.run("resize-window", "-t", "t", "-x", "80", "-y", "24")
    screen = tmux.wait_for(
        "the model table at 80 columns",
        lambda s: (
            max(len(line) for line in s.splitlines()) <= 80
            and any(line.startswith(" Model ") for line in s.splitlines())
        ),
    )
    header = next(line for line in screen.splitlines() if line.startswith(" Model "))
    for column in ("Model", "Node", "State", "Slots", "Queued"):
        assert column in header.split(), header
    # Still the pinned row, Queued cell and all: as many cells as the header has columns.
    (row,) = rows_of(screen, model)
    assert "yes" in row.split()
