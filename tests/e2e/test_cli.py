"""The command line as a user runs it: `lmtui sim` nodes, `lmtui --serve` over them, errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

SIM_TOML = """
[[nodes]]
name = "studio"
kind = "lmstudio"
version = "0.4.2"
memory_gb = 64.0
parallel = 2
loaded = ["m1"]
[[nodes.models]]
key = "m1"
size_gb = 4.0
[[nodes.models]]
key = "m2"
size_gb = 4.0

[[nodes]]
name = "box"
kind = "ollama"
memory_gb = 32.0
parallel = 2
[[nodes.models]]
key = "m2"
size_gb = 4.0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lmtui(*args: str, **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_STATE_HOME": kw.pop("state"),
        "XDG_DATA_HOME": kw.pop("data"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lmtui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def test_a_broken_config_names_file_line_and_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "http://127.0.0.1:1"\nslotz = 2\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "lmtui", "--serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert f"{cfg}:5: nodes[0].slotz" in p.stderr
    assert "Traceback" not in p.stderr


def test_every_problem_of_a_broken_config_is_one_line_of_its_own(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "http://127.0.0.1:1"\nslots = -1\n'
        '[nodes.ssh]\nport = 70000\n\n[router]\ncolour = "red"\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "lmtui", "--serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "nodes[0].slots",
        "nodes[0].ssh.port",
        "router.colour",
    ], p.stderr
    assert all(line.startswith(f"lmtui: {cfg}:") for line in lines)


def test_serve_routes_to_nodes_started_by_lmtui_sim(tmp_path: Path) -> None:
    sim_cfg = tmp_path / "sim.toml"
    sim_cfg.write_text(SIM_TOML)
    dirs = {"state": str(tmp_path / "state"), "data": str(tmp_path / "data")}
    sim = lmtui("sim", "--config", str(sim_cfg), "--time-scale", "0.01", **dirs)
    serve = None
    try:
        assert sim.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = sim.stdout.readline()
            if not line or "Ctrl-C" in line:
                break
            lines.append(line)
        blocks = "".join(lines)
        assert blocks.count("[[nodes]]") == 2, blocks
        port = free_port()
        cfg = tmp_path / "lmtui.toml"
        cfg.write_text(blocks + "\n[poll]\ninterval = 0.2\n")
        serve = lmtui("--serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}", **dirs)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        models: list[str] = []
        while time.monotonic() < deadline and "m2" not in models:
            try:
                data = httpx.get(f"{base}/v1/models", timeout=2).json()["data"]
                models = [m["id"] for m in data]
            except httpx.HTTPError:
                time.sleep(0.2)
        assert {"m1", "m2"} <= set(models)
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=30)
        r = c.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert r.choices[0].message.content
        serve.send_signal(signal.SIGINT)
        out, err = serve.communicate(timeout=30)
        assert serve.returncode == 0, err
        assert re.search(r"router on http://127\.0\.0\.1:\d+/v1", out)
        assert "studio is healthy" in out and "box is healthy" in out
    finally:
        for p in (serve, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)


@pytest.mark.parametrize("args", [["--connect", "http://x", "--demo"]])
def test_contradictory_flags_are_refused(args: list[str]) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "lmtui", *args], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "--connect" in p.stderr


@contextmanager
def demo_serving_a_long_stream(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``lmtui --serve --demo`` with a long generation streaming from its old serial node,
    so something is running when the test stops it; killed at the end if still alive."""
    port = free_port()
    dirs = {"state": str(tmp_path / "state"), "data": str(tmp_path / "data")}
    serve = lmtui("--serve", "--demo", "--listen", f"127.0.0.1:{port}", **dirs)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = {
            "model": "acme-support-ft-32b",
            "max_tokens": 2000,
            "stream": True,
            "messages": [{"role": "user", "content": "write a long story"}],
        }
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_bytes())
            yield serve
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=10)


def test_serve_demo_stops_on_sigterm_with_requests_running(tmp_path: Path) -> None:
    with demo_serving_a_long_stream(tmp_path) as serve:
        serve.send_signal(signal.SIGTERM)
        # Bounded drain: the process must end by itself, not hang on running requests.
        out, err = serve.communicate(timeout=45)
    assert serve.returncode == 0, err
    assert "stopped" in out


def test_the_demo_keeps_its_pins_and_requests_out_of_the_users_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmtui import cli
    from lmtui.config import Config, NodeConfig, RouterConfig

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    node = NodeConfig(name="n", kind="openai", url="http://127.0.0.1:9/v1")
    real = cli._engine(Config(nodes=[node]), "lmtui.toml", None)
    assert real.request_log is not None and real.controller.state.path is not None
    assert real.request_log.retention_s == 30 * 86400
    demo = cli._engine(Config(nodes=[node]), "demo", None)
    assert demo.request_log is None and demo.controller.state.path is None
    off = Config(nodes=[node], router=RouterConfig(request_log=False, request_log_days=0))
    assert cli._engine(off, "lmtui.toml", None).request_log is None
    keep_all = Config(nodes=[node], router=RouterConfig(request_log_days=0))
    log = cli._engine(keep_all, "lmtui.toml", None).request_log
    assert log is not None and log.retention_s is None


async def test_the_dashboard_gets_the_configs_keymap_and_the_users_themes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmtui.config.paths
    import lmtui.tui.app
    from lmtui import cli
    from lmtui.config import load_config
    from lmtui.tui.themes import SHIPPED_THEMES_DIR

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    home = tmp_path / "config-home"
    monkeypatch.setattr(lmtui.config.paths, "config_dir", lambda: home)
    given: dict[str, object] = {}

    class App:
        async def run_async(self) -> None:
            pass

    def build_app(client: object, **kw: object) -> App:
        given.update(kw)
        return App()

    monkeypatch.setattr(lmtui.tui.app, "build_app", build_app)
    path = tmp_path / "lmtui.toml"
    path.write_text("[keymap]\ntheme = 'T'\nhelp = ['f1', 'h']\n")
    assert await cli.run_tui(load_config(path), str(path), "off", read_only=True) == 0
    assert given["keymap"] == {"theme": "T", "help": "f1,h"}
    # lmtui's themes, then the user's (tests/tui/test_themes.py: they join the cycle).
    assert given["theme_dirs"] == (SHIPPED_THEMES_DIR, home / "themes")
    # The demo cluster and an attached dashboard get the user's themes too.
    given.clear()
    assert await cli.run_tui(None, "demo", "off", read_only=True) == 0
    assert given["theme_dirs"] == (SHIPPED_THEMES_DIR, home / "themes")
    assert given["keymap"] == {}


def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    # The demo's stream is 64-256 tokens long: now and then it ends, and the drain with it,
    # before the second signal lands. That run proves nothing either way, so it is run
    # again (at most three times); a second signal that never cuts a drain fails.
    results = []
    for attempt in range(3):
        with demo_serving_a_long_stream(tmp_path / str(attempt)) as serve:
            serve.send_signal(signal.SIGTERM)  # drain: the stream may finish
            assert serve.stdout is not None
            seen = []
            for line in serve.stdout:  # the drain has begun once it says so
                seen.append(line)
                if "stopping:" in line:
                    break
            serve.send_signal(signal.SIGTERM)  # the operator will not wait
            out, err = serve.communicate(timeout=45)
            out = "".join(seen) + out
        results.append((serve.returncode, out, err))
        if serve.returncode == 130:
            assert "stopped (forced)" in out
            return
        # The drain was over before the second signal: a clean stop, not a forced one.
        # (-15: now and then the second SIGTERM kills the process outright though its
        # handler is installed; seen about 1 run in 20 under load, cause not found yet,
        # so such a run is retried too rather than taken as the answer.)
        assert serve.returncode in (0, -signal.SIGTERM), (out, err)
        assert "stopped (forced)" not in out, (out, err)
    raise AssertionError(f"the second signal never cut the drain short: {results}")
