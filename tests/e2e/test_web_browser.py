"""`lmtui --web --demo` in a real browser: headless Chromium (Debian's `chromium`) opens
the page, the dashboard's node table is on its terminal, and Ctrl-C leaves no process
behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from cdp import Browser, require_chromium

pytestmark = pytest.mark.slow

#: The demo cluster's four nodes (lmtui/demo.py).
DEMO_NODES = ("mac-studio-1", "mac-studio-2", "linux-ollama", "linux-llamacpp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_web(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`lmtui --web ...` in a process group of its own (as a shell runs it), and its URL
    once it prints it (bounded)."""
    extra = env or {}
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_STATE_HOME": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
    }
    env.pop("LMTUI_ADMIN_TOKEN", None)
    env.update(extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmtui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(r"in a browser at (\S+)", line):
            return proc, m.group(1)
    stop(proc)
    raise AssertionError("lmtui --web did not print its URL:\n" + "".join(seen))


def start_serve(tmp: Path, port: int) -> subprocess.Popen[str]:
    """`lmtui --serve --demo` on loopback, for `--web --connect` to attach to."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "s"), "XDG_DATA_HOME": str(tmp / "d")}
    return subprocess.Popen(
        [sys.executable, "-m", "lmtui", "--serve", "--demo", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> int:
    """Ctrl-C as a terminal sends it (to the foreground process group); SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise
    except ProcessLookupError:
        return proc.wait(5)


def sessions_of(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The `lmtui --connect` processes the web server runs for its browser sessions."""
    out = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "--connect" in child.cmdline():
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


async def test_the_demo_dashboard_opens_in_chromium_and_ctrl_c_leaves_nothing(
    tmp_path: Path,
) -> None:
    require_chromium()
    router = free_port()
    proc, url = start_web(
        tmp_path, "--web", f"127.0.0.1:{free_port()}", "--demo", "--listen", f"127.0.0.1:{router}"
    )
    sessions: list[psutil.Process] = []
    try:
        async with Browser(tmp_path) as browser:
            await browser.open(url)
            text = await browser.wait_for_text("Node", *DEMO_NODES, timeout=90)
            await browser.screenshot(tmp_path / "lmtui-web.png")
            (tmp_path / "lmtui-web.txt").write_text(text)
            # The node table's header row, and the session is attached (not embedded).
            assert re.search(r"Node\s+.*Status", text), text
            assert "attached" in text, text
            sessions = sessions_of(proc)
            # One browser tab, one dashboard process, attached to this lmtui's router.
            assert len(sessions) == 1
            assert f"http://127.0.0.1:{router}" in sessions[0].cmdline()
            assert (tmp_path / "lmtui-web.png").stat().st_size > 10_000
    finally:
        rc = stop(proc)
        assert proc.stdout is not None
        log = proc.stdout.read()
    assert rc == 0, log
    assert "1 browser session(s) asked to quit" in log or "ended (0 open)" in log, log
    await asyncio.sleep(0.5)
    assert [s.pid for s in sessions if alive(s)] == []


async def test_sessions_end_when_lmtui_is_killed_with_sigkill(tmp_path: Path) -> None:
    """SIGKILL cannot be passed on: each session notices its parent is gone and exits."""
    proc, url = start_web(
        tmp_path,
        "--web",
        f"127.0.0.1:{free_port()}",
        "--demo",
        "--listen",
        f"127.0.0.1:{free_port()}",
    )
    sessions: list[psutil.Process] = []
    try:
        origin = url.rstrip("/")
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{url}ws?width=120&height=40", headers={"Origin": origin})
            async with asyncio.timeout(60):
                while not sessions:
                    await asyncio.sleep(0.2)
                    sessions = sessions_of(proc)
                # The dashboard is up: textual-serve forwards its first screen.
                while (await ws.receive()).type != aiohttp.WSMsgType.BINARY:
                    pass
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            await ws.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(s) for s in sessions):
            await asyncio.sleep(0.2)
        assert [s.pid for s in sessions if alive(s)] == []
    finally:
        for s in sessions:
            with contextlib.suppress(psutil.NoSuchProcess):
                s.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_with_a_token_chromium_gets_the_dashboard_only_with_it(tmp_path: Path) -> None:
    """`lmtui --web 0.0.0.0:P --connect URL` beside a `lmtui --serve --demo`: beyond
    loopback only with a token, which the browser must present (here in the URL, as a
    tablet's browser would after its password prompt)."""
    require_chromium()
    token = "web-test-token-4f1c2a"
    router = free_port()
    serve = start_serve(tmp_path, router)
    web_proc = None
    try:
        port = free_port()
        web_proc, url = start_web(
            tmp_path,
            "--web",
            f"0.0.0.0:{port}",
            "--connect",
            f"http://127.0.0.1:{router}",
            env={"LMTUI_ADMIN_TOKEN": token},
        )
        assert url == f"http://127.0.0.1:{port}/"
        async with Browser(tmp_path) as browser:
            await browser.open(url)
            # A 401 with a Basic challenge: Chromium would ask for the password; headless,
            # it shows nothing, and no dashboard starts.
            await asyncio.sleep(3)
            assert await browser.evaluate("typeof window.__lmtuiTerminals") == "undefined"
            assert sessions_of(web_proc) == []
            await browser.send("Page.navigate", url=f"http://operator:{token}@127.0.0.1:{port}/")
            await browser.wait_for_text("Node", *DEMO_NODES, timeout=90)
            (session,) = sessions_of(web_proc)
            assert token not in " ".join(session.cmdline())
            assert session.environ().get("LMTUI_ADMIN_TOKEN") == token
            # q in the browser quits that tab's dashboard: the page says so, the process ends.
            await browser.press("q")
            await browser.wait_for("document.body.classList.contains('-closed')", timeout=30)
            deadline = time.monotonic() + 20
            while alive(session) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not alive(session) and sessions_of(web_proc) == []
    finally:
        if web_proc is not None:
            assert stop(web_proc) == 0
        stop(serve)


async def test_with_the_routers_tls_the_page_and_its_sessions_use_https(tmp_path: Path) -> None:
    """`[router] tls_cert`/`tls_key`: the web dashboard is served over HTTPS with that
    certificate, and each session reaches the router at https://127.0.0.1 trusting it."""
    require_chromium()
    import trustme

    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[router]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    router = free_port()
    proc, url = start_web(
        tmp_path,
        "--web",
        f"127.0.0.1:{free_port()}",
        "--config",
        str(cfg),
        "--listen",
        f"127.0.0.1:{router}",
    )
    try:
        assert url.startswith("https://127.0.0.1:")
        # Chromium does not know the test's CA; the session (Python) is given the cert.
        async with Browser(tmp_path, "--ignore-certificate-errors") as browser:
            await browser.open(url)
            await browser.wait_for_text("attached", f"https://127.0.0.1:{router}", timeout=90)
            (session,) = sessions_of(proc)
            cmd = session.cmdline()
            assert cmd[cmd.index("--ca") + 1] == str(cert)
    finally:
        assert stop(proc) == 0
